"""``viops evaluate | promote | rollback | score | verify | serve | keys``: the gate, moving the champion, batch
scoring, and signed versions (checking one, serving one, making a key pair)."""

from __future__ import annotations

import os
import sys

from viops.commands.common import EXIT_REJECTED, client, common, emit, json_object


def _cmd_evaluate(args) -> int:
    from pipelines.config.loading import load_gate_config
    from pipelines.registry.gate import evaluate

    mlflow_client, uri = client(args)
    gate = load_gate_config(args.config) if args.config else None
    verdict = evaluate(mlflow_client, args.model, tracking_uri=uri, candidate=args.candidate, against=args.against,
                       data=args.data, gate=gate, log=not args.no_log)
    from monitoring.events import push_verdict

    result = verdict.to_json()
    emit({**result, "tracking_uri": uri, "pushed": push_verdict(result, os.environ.get("VIOPS_PUSHGATEWAY"))},
         args.json, verdict.summary())
    return 0 if verdict.passed else EXIT_REJECTED


def _cmd_promote(args) -> int:
    from pipelines.registry.audit import default_actor
    from pipelines.registry.promotion import promote

    mlflow_client, uri = client(args)
    evidence = json_object(args.evidence, "--evidence") or None
    change = promote(mlflow_client, args.model, args.version, reason=args.reason, actor=args.actor or default_actor(),
                     audit_log=args.audit_log, force=args.force, trigger=_trigger(args), evidence=evidence)
    emit({**change.to_json(), "tracking_uri": uri, "pushed": _push_change(change)}, args.json, change.message)
    return 0


def _cmd_rollback(args) -> int:
    from pipelines.registry.audit import default_actor
    from pipelines.registry.promotion import rollback

    mlflow_client, uri = client(args)
    change = rollback(mlflow_client, args.model, reason=args.reason, actor=args.actor or default_actor(),
                      audit_log=args.audit_log, trigger=_trigger(args))
    emit({**change.to_json(), "tracking_uri": uri, "pushed": _push_change(change)}, args.json, change.message)
    return 0


def _push_change(change) -> bool:
    """A champion that moved is an annotation on the dashboards (``viops_registry_change_timestamp_seconds``)."""
    from monitoring.events import push_change

    return push_change(change.to_json(), os.environ.get("VIOPS_PUSHGATEWAY"))


def _cmd_score(args) -> int:
    from pipelines.serving.scoring import score_file

    mlflow_client, uri = client(args)
    result = score_file(mlflow_client, args.model, args.input, args.output, tracking_uri=uri,
                        batch_size=args.batch_size, num_samples=args.num_samples, device=args.device)
    summary = result.to_json()
    human = (f"scored {result.rows} rows with version {result.version} of {result.model} in {result.seconds:.2f}s "
             f"({summary['rows_per_second']:.0f} rows/s, {summary['batches']} batches, batch p95 "
             f"{summary['batch_latency_ms']['p95']:.1f} ms) -> {result.output}")
    emit({**summary, "tracking_uri": uri}, args.json, human)
    return 0


def _cmd_verify(args) -> int:
    from monitoring.metrics import export_signature_status
    from pipelines.config.base import ConfigError
    from pipelines.registry.signing import verification_key, verify_version
    from pipelines.registry.versions import parse_model_ref, resolve_version

    if verification_key() is None:
        raise ConfigError("no verification key: set $VIOPS_VERIFY_KEY (or $VIOPS_SIGNING_KEY) to a PEM key file")
    mlflow_client, uri = client(args)
    name, selector = parse_model_ref(args.model)
    version = resolve_version(mlflow_client, name, selector or "@champion")
    verify_version(mlflow_client, name, version)  # raises SignatureInvalid: the CLI pages and exits 6
    export = export_signature_status(name, str(version.version), True, args.pushgateway)
    payload = {"model": name, "version": str(version.version), "verified": True, "pushed": export.pushed,
               "tracking_uri": uri}
    emit(payload, args.json, f"version {version.version} of {name}: every file matches its signature"
                             + (f" (pushed to {args.pushgateway})" if export.pushed else ""))
    return 0


def _cmd_serve(args) -> int:
    import gc
    import shutil
    import tempfile

    from pipelines.registry.versions import parse_model_ref
    from pipelines.serving.loading import fetch_checked

    mlflow_client, uri = client(args)
    name, selector = parse_model_ref(args.model)
    # The served files stay for the server this command becomes; a version refused before it starts leaves none.
    scratch = None if args.model_dir else tempfile.mkdtemp(prefix="viops-serve-")
    try:
        split = _canary_split(mlflow_client, name, selector, uri)
        if split is not None:  # what production serves is the split: the router over both versions' checked files
            from pipelines.serving.canary import save_router

            local = save_router(mlflow_client, split, tracking_uri=uri, dst=args.model_dir or f"{scratch}/router")
            payload = {"model": name, "version": split.champion.version, "canary": split.spec, "verified":
                       split.champion.verified and split.candidate.verified, "model_dir": str(local),
                       "url": f"http://{args.host}:{args.port}", "tracking_uri": uri}
            emit(payload, args.json, f"serving the canary split of {name}: version {split.candidate.version} "
                                     f"answers {split.fraction:.0%} of the rows, version {split.champion.version} the "
                                     f"rest (a 'version' column says which) from {local} on {payload['url']}")
        else:
            # The very files the server will load are the ones checked.
            version, local, verified = fetch_checked(mlflow_client, name, selector, tracking_uri=uri,
                                                     dst=args.model_dir or scratch)
            checked = "signature verified" if verified else "unverified: no key configured"
            payload = {"model": name, "version": str(version.version), "verified": verified, "model_dir": str(local),
                       "url": f"http://{args.host}:{args.port}", "tracking_uri": uri}
            emit(payload, args.json, f"serving version {version.version} of {name} ({checked}) from {local} on "
                                     f"{payload['url']}")
    except BaseException:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
        raise
    # The versions loaded to read the split are released now: exec runs no exit handlers to remove their downloads.
    del split
    gc.collect()
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", str(local), "--env-manager", "local",
               "--host", args.host, "--port", str(args.port), "--workers", str(args.workers)]
    sys.stdout.flush()
    os.execvp(command[0], command)  # replaces this process: what runs is what was verified


def _canary_split(mlflow_client, name: str, selector: str | None, uri: str):
    """The canary split a bare model name serves while a challenger is in canary; None otherwise."""
    from pipelines.serving.canary import load_split

    return load_split(mlflow_client, name, tracking_uri=uri) if selector is None else None


def _cmd_keys(args) -> int:
    from pipelines.registry.signing import generate_keys, key_fingerprint

    private, public = generate_keys(args.out)
    payload = {"signing_key": str(private), "verify_key": str(public),
               "fingerprint": key_fingerprint(public.read_bytes())}
    emit(payload, args.json, f"wrote {private} (private: keep it secret, mode 0600) and {public}; sign with "
                             f"VIOPS_SIGNING_KEY={private}, verify with VIOPS_VERIFY_KEY={public}")
    return 0


def _audited(p) -> None:
    p.add_argument("--model", required=True, help="registered model name")
    p.add_argument("--actor", help="who asks (default: $VIOPS_ACTOR, else the OS user)")
    p.add_argument("--audit-log", help="local audit file (default: $VIOPS_AUDIT_LOG, else ./viops-audit.jsonl)")
    p.add_argument("--trigger", help="JSON object recorded with the audit record (e.g. the Airflow run)")
    p.add_argument("--tracking-uri")


def _trigger(args) -> dict:
    return json_object(args.trigger, "--trigger")


def add_commands(sub) -> None:
    """Add the evaluate, promote, rollback, score commands to the ``viops`` parser."""
    p = sub.add_parser("evaluate",
                       help="the gate: score a candidate and the champion on the same data, apply thresholds")
    common(p, config=False)
    p.add_argument("--model", required=True, help="registered model name")
    p.add_argument("--candidate", help="version number or @alias to evaluate (default @challenger)")
    p.add_argument("--against", help="version number or @alias to compare with (default @champion)")
    p.add_argument("--data", help="CSV/Parquet with features and target (default: the candidate's held-out split)")
    p.add_argument("--config", help="YAML with a 'gate:' section (default: the candidate's training config)")
    p.add_argument("--no-log", action="store_true", help="do not log the verdict to MLflow or tag the version")
    p.add_argument("--tracking-uri")
    p.set_defaults(func=_cmd_evaluate)
    p = sub.add_parser("promote", help="make a version champion (the old champion becomes previous-champion)")
    common(p, config=False)
    _audited(p)
    p.add_argument("--version", required=True, help="version number or @alias")
    p.add_argument("--reason", default="promoted with viops promote", help="why (recorded in the audit trail)")
    p.add_argument("--force", action="store_true", help="promote even though the gate rejected the version")
    p.add_argument("--evidence", help="JSON object: a challenger's live (shadow) evidence, kept in the audit record")
    p.set_defaults(func=_cmd_promote)
    p = sub.add_parser("rollback", help="make previous-champion the champion again; tag the demoted version")
    common(p, config=False)
    _audited(p)
    p.add_argument("--reason", required=True, help="why (recorded in the audit trail and on the demoted version)")
    p.set_defaults(func=_cmd_rollback)
    p = sub.add_parser("score", help="batch predictions with uncertainty from a registered version")
    common(p, config=False)
    p.add_argument("--model", required=True, help="NAME (its champion), NAME@alias or NAME/version")
    p.add_argument("--input", required=True, help="CSV or Parquet with the model's feature columns")
    p.add_argument("--output", required=True, help="CSV or Parquet to write (with <output>.latency.json beside it)")
    p.add_argument("--batch-size", type=int, default=10_000, help="rows per predict call (default 10000)")
    p.add_argument("--num-samples", type=int, help="posterior draws per row (default: the model's)")
    p.add_argument("--device", help="where the draws and the network run: cpu (default), cuda or cuda:<index>")
    p.add_argument("--tracking-uri")
    p.set_defaults(func=_cmd_score)
    p = sub.add_parser("verify", help="check a version's files against its signature ($VIOPS_VERIFY_KEY)")
    common(p, config=False)
    p.add_argument("--model", required=True, help="NAME (its champion), NAME@alias or NAME/version")
    p.add_argument("--pushgateway", default=os.environ.get("VIOPS_PUSHGATEWAY"),
                   help="push viops_model_signature_valid here (default $VIOPS_PUSHGATEWAY)")
    p.add_argument("--tracking-uri")
    p.set_defaults(func=_cmd_verify)
    p = sub.add_parser("serve", help="verify a version's signature, then run `mlflow models serve` on those files")
    common(p, config=False)
    p.add_argument("--model", required=True, help="NAME (its champion), NAME@alias or NAME/version")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=5001, help="port to listen on (default 5001)")
    p.add_argument("--workers", type=int, default=1, help="server worker processes (default 1)")
    p.add_argument("--model-dir", help="where to download the version (default: a new temporary folder)")
    p.add_argument("--tracking-uri")
    p.set_defaults(func=_cmd_serve)
    p = sub.add_parser("keys", help="key pairs for signed versions")
    keys = p.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    p = keys.add_parser("generate", help="write signing-key.pem (private, 0600) and verify-key.pem into a folder")
    p.add_argument("--out", required=True, help="folder to write the pair into")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
    p.set_defaults(func=_cmd_keys)
