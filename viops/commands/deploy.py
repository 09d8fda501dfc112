"""``viops deploy start | reject | ramp | status``: a challenger's live stage (shadow or canary) after the gate.

The monitor promotes or rejects a live challenger on live evidence (docs/deployment.md); these commands deploy one
(the retrain does it when its config says ``deploy.strategy: shadow`` or ``canary``), turn one away or ramp a canary
(by hand, or for the vi_monitoring DAG), and show where a model's challenger stands.
"""

from __future__ import annotations

from viops.commands.common import client, common, emit, json_object


def _cmd_start(args) -> int:
    from pipelines.registry.audit import default_actor
    from pipelines.registry.deployment import deploy_version

    mlflow_client, uri = client(args)
    deployment = deploy_version(mlflow_client, args.model, args.version, tracking_uri=uri, reason=args.reason,
                                actor=args.actor or default_actor(), strategy=args.strategy)
    policy = deployment.policy
    how = (f"promoted after {policy.shadow_windows} clean live windows" if deployment.stage == "shadow" else
           f"answering {deployment.fraction:.0%} of the traffic, ramped through {policy.steps}")
    emit({**deployment.to_json(), "tracking_uri": uri}, args.json,
         f"version {deployment.version} of {args.model} is in {deployment.stage}: {how}; rejected at a bad window "
         f"(NLL tolerance {policy.nll_tolerance:g} nats/row)")
    return 0


def _cmd_reject(args) -> int:
    from pipelines.registry.audit import default_actor
    from pipelines.registry.deployment import reject

    mlflow_client, uri = client(args)
    outcome = reject(mlflow_client, args.model, args.version, reasons=args.reason, actor=args.actor or default_actor(),
                     evidence=json_object(args.evidence, "--evidence"), audit_log=args.audit_log,
                     trigger=json_object(args.trigger, "--trigger"))
    emit({**outcome, "tracking_uri": uri}, args.json, outcome["message"])
    return 0


def _cmd_ramp(args) -> int:
    from pipelines.registry.deployment import ramp

    mlflow_client, uri = client(args)
    outcome = ramp(mlflow_client, args.model, args.version, args.step)
    emit({**outcome, "tracking_uri": uri}, args.json, outcome["message"])
    return 0


def _cmd_status(args) -> int:
    from pipelines.registry.deployment import Deployment
    from pipelines.registry.versions import CHALLENGER, CHAMPION, alias_version

    mlflow_client, uri = client(args)
    champion, challenger = alias_version(mlflow_client, args.model, CHAMPION), alias_version(
        mlflow_client, args.model, CHALLENGER)
    deployment = None
    if challenger is not None:
        deployment = Deployment.of(args.model, mlflow_client.get_model_version(args.model, challenger))
    payload = {"model": args.model, "champion": champion, "challenger": challenger,
               "deployment": None if deployment is None else deployment.to_json(), "tracking_uri": uri}
    stage = "no challenger" if challenger is None else (
        f"challenger v{challenger}: " + (deployment.stage if deployment else "not deployed (offline gate only)"))
    emit(payload, args.json, f"{args.model}: champion v{champion}; {stage}")
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("deploy", help="a challenger's live stage: put it in shadow, reject it, show the stage")
    actions = p.add_subparsers(dest="deploy_command", required=True, metavar="ACTION")
    start = actions.add_parser("start", help="deploy the challenger (gate passed) in shadow or canary, by its "
                                             "config's policy")
    reject = actions.add_parser("reject", help="turn a live challenger away (the champion is untouched)")
    ramp = actions.add_parser("ramp", help="move a canary to a ramp step (more of the traffic)")
    status = actions.add_parser("status", help="the champion, the challenger and its deployment stage")
    for q in (start, reject, ramp, status):
        common(q, config=False)
        q.add_argument("--model", required=True, help="registered model name")
        q.add_argument("--tracking-uri")
    for q in (start, reject, ramp):
        q.add_argument("--version", required=True, help="version number or @alias (e.g. @challenger)")
        q.add_argument("--actor", help="who asks (default: $VIOPS_ACTOR, else the OS user)")
    start.add_argument("--reason", default="passed the gate: live evidence before promotion",
                       help="why (tagged on the version)")
    start.add_argument("--strategy", choices=("shadow", "canary"),
                       help="override the config's deploy.strategy (an offline config goes to shadow)")
    start.set_defaults(func=_cmd_start)
    reject.add_argument("--reason", action="append", required=True, help="why (repeatable; tagged and audited)")
    reject.add_argument("--evidence", help="JSON object: the live evidence, kept in the audit record")
    reject.add_argument("--trigger", help="JSON object recorded with the audit record (e.g. the Airflow run)")
    reject.add_argument("--audit-log", help="local audit file (default: $VIOPS_AUDIT_LOG, else ./viops-audit.jsonl)")
    reject.set_defaults(func=_cmd_reject)
    ramp.add_argument("--step", type=int, required=True, help="the ramp step: an index into deploy's steps")
    ramp.set_defaults(func=_cmd_ramp)
    status.set_defaults(func=_cmd_status)
