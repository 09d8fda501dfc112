"""The one retrain path: prepare (with a window's labelled rows) -> train -> register -> evaluate -> promote | reject.

``viops monitor --execute`` runs :func:`retrain`; the ``svi_retrain`` DAG runs the same steps one task each. Every
step is the ``viops`` command of the same name in a child process (Lightning's DDP launcher re-executes its entry
script, and a crash or a GPU allocation stays in the child), built from one :class:`RetrainRequest`, so both callers
pass the same overrides, tags, reason, actor and audit log:

1. ``viops prepare --extra-data <window>``: the config's data plus the window's labelled rows with finite features
   and target, split together;
2. ``viops train --prepared --no-register --resume``, the reason tagged on the run (``viops.trigger_reason``); a
   retry continues the unfinished run of the same run name from its checkpoint;
3. ``viops register``: the new version becomes ``challenger`` (idempotent per run);
4. ``viops evaluate``: the gate against the champion on the new run's held-out split (exit 1 is a rejection);
5. ``viops promote`` when the gate passed, with the reason, actor and trigger in the audit record; or, when the
   config says ``deploy.strategy: shadow`` or ``canary``, ``viops deploy start``: the version stays challenger,
   deployed live, and the monitor promotes or rejects it on live windows (docs/deployment.md). A version the gate
   rejected stays a challenger and the champion is untouched.

The children get the tracking URI through ``MLFLOW_TRACKING_URI`` (never on a command line, which ``ps`` shows).
:func:`retrain` holds the model's lease (:mod:`pipelines.registry.lease`) throughout: a second retrain of the same
model, from any host, is refused with :class:`~pipelines.registry.lease.LeaseHeld` while it runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.child_process import run_viops

__all__ = ["RetrainRequest", "prepare_data", "train_candidate", "register_candidate", "evaluate_candidate",
           "promote_candidate", "deploy_candidate", "next_step", "deploy_strategy", "retrain"]


@dataclass(frozen=True)
class RetrainRequest:
    """One retrain, as both callers describe it.

    Attributes:
        config: the training config file (the champion's resolved config, or the DAG's ``config`` param).
        reason: why; tagged on the run and recorded with the promotion.
        workdir: where the prepared data goes (keyed by the Airflow run or the window, so a retry reuses it).
        tracking_uri: the MLflow server; None lets the children use ``$MLFLOW_TRACKING_URI``.
        overrides: ``dotted.key=value`` config overrides.
        window: a window file whose labelled rows join the training data.
        run_name: the MLflow run name of the training run.
        actor: who promotes (default: the children's ``$VIOPS_ACTOR``, else the OS user).
        audit_log: the local audit file (default: the children's ``$VIOPS_AUDIT_LOG``).
        trigger: recorded with the promotion's audit record (the incident, the window, the Airflow run ...).
        tags: ``KEY=VALUE`` tags on the training run (where it ran: the Airflow queue and worker ...).
    """

    config: str
    reason: str
    workdir: str
    tracking_uri: str | None = None
    overrides: tuple[str, ...] = ()
    window: str | None = None
    run_name: str | None = None
    actor: str | None = None
    audit_log: str | None = None
    trigger: dict = field(default_factory=dict)
    tags: tuple[str, ...] = ()

    def _sets(self) -> list[str]:
        return [arg for item in self.overrides for arg in ("--set", item)]

    def env(self) -> dict[str, str]:
        """The children's environment additions: the tracking URI, when the request names one."""
        return {"MLFLOW_TRACKING_URI": self.tracking_uri} if self.tracking_uri else {}


def prepare_data(request: RetrainRequest) -> dict:
    """Step 1: ``viops prepare`` (with the window's rows); its manifest plus ``directory``."""
    extra = ["--extra-data", request.window] if request.window else []
    out = Path(request.workdir) / "prepared"
    return run_viops(["prepare", "--config", request.config, "--out", str(out), *extra, *request._sets()],
                     env=request.env())


def train_candidate(request: RetrainRequest, prepared: dict) -> dict:
    """Step 2: ``viops train --prepared --no-register [--resume]``; the training result (run id, model name,
    metrics)."""
    name = ["--run-name", request.run_name] if request.run_name else []
    # --resume: a retried step (an Airflow retry, a re-run of the same request) continues the run its first try
    # started, from that run's last checkpoint, instead of training again from step 0.
    resume = ["--resume"] if request.run_name else []  # the run name says which run a retry continues
    tags = [arg for tag in request.tags for arg in ("--tag", tag)]
    return run_viops(["train", "--config", request.config, "--prepared", prepared["directory"], "--no-register",
                      "--reason", request.reason, *resume, *name, *tags, *request._sets()], env=request.env())


def register_candidate(request: RetrainRequest, trained: dict) -> dict:
    """Step 3: ``viops register``: the run's model becomes a version with alias ``challenger``."""
    return run_viops(["register", "--run-id", trained["run_id"], "--model", trained["model_name"]],
                     env=request.env())


def evaluate_candidate(request: RetrainRequest, registered: dict) -> dict:
    """Step 4: ``viops evaluate`` against the champion; the verdict (a rejection is a verdict, not a failure).

    A re-run of a retrain whose version was promoted meanwhile finds that version registered and champion: it is
    not compared with itself, and the promotion step finds nothing to change."""
    if "champion" in registered.get("aliases", ()):
        version = str(registered["model_version"])
        return {"passed": True, "already_champion": True, "model": registered["model_name"],
                "candidate_version": version, "champion_version": version, "evaluation_run_id": None,
                "reasons": [f"version {version} is already champion: not evaluated again"]}
    return run_viops(["evaluate", "--model", registered["model_name"], "--candidate",
                      str(registered["model_version"])], ok_codes=(0, 1), env=request.env())


def promote_candidate(request: RetrainRequest, verdict: dict) -> dict:
    """Step 5: ``viops promote`` of a version that passed the gate, with the request's reason, actor and trigger."""
    if not verdict["passed"]:
        raise ValueError(f"version {verdict['candidate_version']} of {verdict['model']} failed the gate; "
                         f"only a passed verdict is promoted")
    actor = ["--actor", request.actor] if request.actor else []
    audit = ["--audit-log", request.audit_log] if request.audit_log else []
    trigger = {**request.trigger, "evaluation_run_id": verdict["evaluation_run_id"]}
    return run_viops(["promote", "--model", verdict["model"], "--version", str(verdict["candidate_version"]),
                      "--reason", request.reason, "--trigger", json.dumps(trigger), *actor, *audit],
                     env=request.env())


def deploy_strategy(request: RetrainRequest) -> str:
    """The config's ``deploy.strategy``: ``offline`` (promote when the gate passes) or ``shadow``."""
    from pipelines.config.loading import load_config, parse_overrides

    return load_config(request.config, parse_overrides(list(request.overrides))).deploy.strategy


def next_step(request: RetrainRequest, verdict: dict) -> str:
    """After the gate: ``reject``, ``promote``, or ``deploy_live`` (``deploy.strategy`` shadow or canary; a version
    that is the champion already is not deployed again)."""
    if not verdict["passed"]:
        return "reject"
    live = deploy_strategy(request) != "offline" and not verdict.get("already_champion")
    return "deploy_live" if live else "promote"


def deploy_candidate(request: RetrainRequest, verdict: dict) -> dict:
    """Step 5 under ``deploy.strategy`` shadow or canary: ``viops deploy start``. The version stays ``challenger``;
    the monitor scores every window with it too (and, in canary, production routes a share of rows to it), and
    promotes or rejects it on live evidence (:mod:`monitoring.shadow`)."""
    if not verdict["passed"]:
        raise ValueError(f"version {verdict['candidate_version']} of {verdict['model']} failed the gate; "
                         f"only a passed verdict is deployed live")
    actor = ["--actor", request.actor] if request.actor else []
    return run_viops(["deploy", "start", "--model", verdict["model"], "--version", str(verdict["candidate_version"]),
                      "--reason", request.reason, *actor], env=request.env())


def retrain(request: RetrainRequest) -> dict:
    """All five steps in order. Returns ``{"run_id", "version", "rows", "verdict": {passed, reasons,
    evaluation_run_id}, "promoted", "promotion", "deployment"}`` (``deployment``: the live stage, under
    ``deploy.strategy`` shadow or canary).

    Raises:
        LeaseHeld: a retrain, promotion or rollback of the model is in progress; nothing was done.
        CLIError: a step's command failed (the message carries its exit code and error line).
    """
    from mlflow import MlflowClient

    from pipelines.config.loading import load_config, parse_overrides
    from pipelines.registry.lease import hold
    from pipelines.tracking import resolve_tracking_uri

    model = load_config(request.config, parse_overrides(list(request.overrides))).model_name
    uri = resolve_tracking_uri(request.tracking_uri)
    with hold(MlflowClient(tracking_uri=uri, registry_uri=uri), model, "retrain",
              incident=request.trigger.get("incident_id")):
        prepared = prepare_data(request)
        trained = train_candidate(request, prepared)
        registered = register_candidate(request, trained)
        verdict = evaluate_candidate(request, registered)
        step = next_step(request, verdict)
        promotion = promote_candidate(request, verdict) if step == "promote" else None
        live = deploy_candidate(request, verdict) if step == "deploy_live" else None
    return {"run_id": trained["run_id"], "version": str(registered["model_version"]),
            "rows": sum(prepared["rows"].values()),
            "verdict": {k: verdict[k] for k in ("passed", "reasons", "evaluation_run_id")},
            "promoted": bool(promotion and promotion["changed"]), "promotion": promotion, "deployment": live}
