"""The ``viops`` command line.

Each subcommand prints human-readable progress on stderr; with ``--json`` the last line of stdout is one JSON object.
Bad input exits non-zero with a one-line error on stderr naming the problem, and changes nothing in the registry.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings

__all__ = ["main"]

EXIT_REJECTED = 1  # viops evaluate: the gate rejected the candidate (the verdict is printed all the same)
EXIT_BAD_INPUT = 2
EXIT_TRAINING_FAILED = 3


def _emit(payload: dict, as_json: bool, human: str) -> None:
    if as_json:
        print(human, file=sys.stderr)
        print(json.dumps(payload, default=str))
    else:
        print(human)


def _cmd_prepare(args) -> int:
    from pipelines.config import load_config, parse_overrides
    from pipelines.data import prepare

    config = load_config(args.config, parse_overrides(args.set))
    data = prepare(config.data, extra=args.extra_data or ())
    out = data.save(args.out)
    manifest = {**data.manifest(), "directory": str(out)}
    _emit(manifest, args.json, f"prepared {data.num_rows} rows from {data.source} into {out} "
                               f"(fingerprint {data.fingerprint})")
    return 0


def _cmd_train(args) -> int:
    from pipelines.config import load_config, parse_overrides
    from pipelines.data import load_prepared
    from pipelines.training import train

    config = load_config(args.config, parse_overrides(args.set))
    prepared = load_prepared(args.prepared) if args.prepared else None
    result = train(
        config,
        prepared=prepared,
        tracking_uri=args.tracking_uri,
        register=False if args.no_register else None,
        run_name=args.run_name,
        tags={"viops.trigger_reason": args.reason} if args.reason else None,
    )
    if result.rank:
        return 0  # a DDP worker: rank 0 reports
    version = f"version {result.model_version} of {result.model_name}" if result.model_version else "not registered"
    human = (
        f"run {result.run_id} finished: val ELBO/datum {result.metrics.get('validation_elbo_per_datum', float('nan')):.4f}, "
        f"{result.metrics['steps']:.0f} steps in {result.metrics['train_seconds']:.1f}s; {version}"
        + (f" ({', '.join(result.aliases)})" if result.aliases else "")
        + f"\n  look: mlflow ui --backend-store-uri {result.tracking_uri}"
    )
    _emit(result.to_json(), args.json, human)
    return 0


def _cmd_register(args) -> int:
    from mlflow import MlflowClient

    from pipelines.registry import register_run
    from pipelines.training import resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    reg = register_run(client, args.run_id, args.model)
    payload = {"model_name": reg.model_name, "model_version": reg.version, "aliases": list(reg.aliases),
               "created": reg.created, "reason": reg.reason, "tracking_uri": uri}
    _emit(payload, args.json, reg.reason)
    return 0


def _cmd_conformance(args) -> int:
    from pipelines.conformance import format_table, run_conformance
    from pipelines.posteriordb import list_posteriors
    from pipelines.training import resolve_tracking_uri

    for name in ("pytorch_lightning", "mlflow"):  # one line per fit instead of each fit's start-up chatter
        logging.getLogger(name).setLevel(logging.WARNING)
    posteriors = args.posterior or list_posteriors(args.posteriordb)
    families = args.family or ["mean_field", "full_rank", "low_rank", "flow"]
    uri = resolve_tracking_uri(args.tracking_uri)

    def progress(r) -> None:
        print(f"{r.posterior} / {r.family}: max |mean err| {r.max_abs_mean_err_sd:.3f} SD, SD ratio "
              f"{r.min_sd_ratio:.3f}-{r.max_sd_ratio:.3f}, k-hat {r.psis_khat:.2f} ({r.seconds:.1f} s)",
              file=sys.stderr)

    results = run_conformance(args.posteriordb, posteriors, families, tracking_uri=uri, seed=args.seed,
                              progress=progress)
    payload = {"results": [r.summary() for r in results], "tracking_uri": uri}
    if args.details:
        payload["parameters"] = [{"posterior": r.posterior, "family": r.family, **row}
                                 for r in results for row in r.parameters]
    _emit(payload, args.json, format_table(results))
    return 0


def _cmd_compare(args) -> int:
    from mlflow import MlflowClient

    from pipelines.compare import compare_experiment
    from pipelines.training import resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri)
    comparison = compare_experiment(MlflowClient(tracking_uri=uri), args.experiment, max_runs=args.max_runs)
    _emit({**comparison.to_json(), "tracking_uri": uri}, args.json, comparison.table())
    return 0


def _client(args):
    from mlflow import MlflowClient

    from pipelines.training import resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri), uri


def _trigger(args) -> dict:
    from pipelines.config import ConfigError

    if not args.trigger:
        return {}
    try:
        trigger = json.loads(args.trigger)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--trigger must be a JSON object: {exc}") from None
    if not isinstance(trigger, dict):
        raise ConfigError(f"--trigger must be a JSON object, got {type(trigger).__name__}")
    return trigger


def _cmd_evaluate(args) -> int:
    from pipelines.config import load_gate_config
    from pipelines.gate import evaluate

    client, uri = _client(args)
    gate = load_gate_config(args.config) if args.config else None
    verdict = evaluate(client, args.model, tracking_uri=uri, candidate=args.candidate, against=args.against,
                       data=args.data, gate=gate, log=not args.no_log)
    _emit({**verdict.to_json(), "tracking_uri": uri}, args.json, verdict.summary())
    return 0 if verdict.passed else EXIT_REJECTED


def _cmd_promote(args) -> int:
    from pipelines.audit import default_actor
    from pipelines.registry import promote

    client, uri = _client(args)
    change = promote(client, args.model, args.version, reason=args.reason, actor=args.actor or default_actor(),
                     audit_log=args.audit_log, force=args.force, trigger=_trigger(args))
    _emit({**change.to_json(), "tracking_uri": uri}, args.json, change.message)
    return 0


def _cmd_rollback(args) -> int:
    from pipelines.audit import default_actor
    from pipelines.registry import rollback

    client, uri = _client(args)
    change = rollback(client, args.model, reason=args.reason, actor=args.actor or default_actor(),
                      audit_log=args.audit_log, trigger=_trigger(args))
    _emit({**change.to_json(), "tracking_uri": uri}, args.json, change.message)
    return 0


def _cmd_score(args) -> int:
    from pipelines.scoring import score_file

    client, uri = _client(args)
    result = score_file(client, args.model, args.input, args.output, tracking_uri=uri, batch_size=args.batch_size,
                        num_samples=args.num_samples)
    summary = result.to_json()
    human = (f"scored {result.rows} rows with version {result.version} of {result.model} in {result.seconds:.2f}s "
             f"({summary['rows_per_second']:.0f} rows/s, {summary['batches']} batches, batch p95 "
             f"{summary['batch_latency_ms']['p95']:.1f} ms) -> {result.output}")
    _emit({**summary, "tracking_uri": uri}, args.json, human)
    return 0


def add_common_arguments(p: argparse.ArgumentParser, config: bool = True) -> None:
    """``--config``/``--set`` (when the command reads a training config) and ``--json``."""
    if config:
        p.add_argument("--config", required=True, help="YAML config file")
        p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")


def build_parser(extend=None) -> argparse.ArgumentParser:
    """The ``viops`` parser; ``extend(subparsers)`` adds the commands of a higher layer (``monitoring``)."""
    parser = argparse.ArgumentParser(prog="viops", description="Production MLOps for variational-inference models.")
    sub = parser.add_subparsers(dest="command", required=True)

    common = add_common_arguments

    p = sub.add_parser("prepare", help="validate, split and fingerprint the training data")
    common(p)
    p.add_argument("--out", required=True, help="directory for the splits, reference snapshot and manifest")
    p.add_argument("--extra-data", action="append", metavar="FILE",
                   help="CSV/Parquet of new labelled rows to add, e.g. a production window (repeatable); only rows "
                        "with finite features and target are used")
    p.set_defaults(func=_cmd_prepare)

    p = sub.add_parser("train", help="train by minibatch SVI, log to MLflow, register the model")
    common(p)
    p.add_argument("--prepared", help="use data written by 'viops prepare' instead of loading it again")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.add_argument("--no-register", action="store_true", help="log the run but do not register a model version")
    p.add_argument("--run-name", help="MLflow run name")
    p.add_argument("--reason", help="why this training runs (tagged on the MLflow run as viops.trigger_reason)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("register", help="register a finished training run (idempotent per run)")
    common(p, config=False)
    p.add_argument("--run-id", required=True)
    p.add_argument("--model", required=True, help="registered model name")
    p.add_argument("--tracking-uri")
    p.set_defaults(func=_cmd_register)

    p = sub.add_parser("conformance", help="fit posteriordb reference posteriors with each family; compare with NUTS")
    common(p, config=False)
    p.add_argument("--posteriordb", required=True, help="a posteriordb folder (one sub-folder per posterior)")
    p.add_argument("--posterior", action="append", help="posterior name (repeatable; default: every one)")
    p.add_argument("--family", action="append", choices=["mean_field", "full_rank", "low_rank", "flow"],
                   help="variational family (repeatable; default: all four)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI for the fits (experiment viops-conformance)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--details", action="store_true", help="add every parameter's comparison to the JSON output")
    p.set_defaults(func=_cmd_conformance)

    p = sub.add_parser("compare", help="the finished runs of an MLflow experiment side by side, best per metric")
    common(p, config=False)
    p.add_argument("--experiment", required=True, help="MLflow experiment name (runs on one dataset share one)")
    p.add_argument("--tracking-uri")
    p.add_argument("--max-runs", type=int, default=100, help="newest runs to compare (default 100)")
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser("evaluate", help="the gate: score a candidate and the champion on the same data, apply thresholds")
    common(p, config=False)
    p.add_argument("--model", required=True, help="registered model name")
    p.add_argument("--candidate", help="version number or @alias to evaluate (default @challenger)")
    p.add_argument("--against", help="version number or @alias to compare with (default @champion)")
    p.add_argument("--data", help="CSV/Parquet with features and target (default: the candidate's held-out split)")
    p.add_argument("--config", help="YAML with a 'gate:' section (default: the candidate's training config)")
    p.add_argument("--no-log", action="store_true", help="do not log the verdict to MLflow or tag the version")
    p.add_argument("--tracking-uri")
    p.set_defaults(func=_cmd_evaluate)

    def audited(p):
        p.add_argument("--model", required=True, help="registered model name")
        p.add_argument("--actor", help="who asks (default: $VIOPS_ACTOR, else the OS user)")
        p.add_argument("--audit-log", help="local audit file (default: $VIOPS_AUDIT_LOG, else ./viops-audit.jsonl)")
        p.add_argument("--trigger", help="JSON object recorded with the audit record (e.g. the Airflow run)")
        p.add_argument("--tracking-uri")

    p = sub.add_parser("promote", help="make a version champion (the old champion becomes previous-champion)")
    common(p, config=False)
    audited(p)
    p.add_argument("--version", required=True, help="version number or @alias")
    p.add_argument("--reason", default="promoted with viops promote", help="why (recorded in the audit trail)")
    p.add_argument("--force", action="store_true", help="promote even though the gate rejected the version")
    p.set_defaults(func=_cmd_promote)

    p = sub.add_parser("rollback", help="make previous-champion the champion again; tag the demoted version")
    common(p, config=False)
    audited(p)
    p.add_argument("--reason", required=True, help="why (recorded in the audit trail and on the demoted version)")
    p.set_defaults(func=_cmd_rollback)

    p = sub.add_parser("score", help="batch predictions with uncertainty from a registered version")
    common(p, config=False)
    p.add_argument("--model", required=True, help="NAME (its champion), NAME@alias or NAME/version")
    p.add_argument("--input", required=True, help="CSV or Parquet with the model's feature columns")
    p.add_argument("--output", required=True, help="CSV or Parquet to write (with <output>.latency.json beside it)")
    p.add_argument("--batch-size", type=int, default=10_000, help="rows per predict call (default 10000)")
    p.add_argument("--num-samples", type=int, help="posterior draws per row (default: the model's)")
    p.add_argument("--tracking-uri")
    p.set_defaults(func=_cmd_score)
    if extend is not None:
        extend(sub)
    return parser


def _quiet_libraries() -> None:
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    warnings.filterwarnings("ignore", category=UserWarning, module=r"pytorch_lightning.*")
    warnings.filterwarnings("ignore", category=FutureWarning)
    for name in ("alembic", "mlflow.store.db.utils", "mlflow.tracking", "mlflow.models"):
        logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: list[str] | None = None, extend=None) -> int:
    parser = build_parser(extend)
    args = parser.parse_args(argv)
    _quiet_libraries()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from pipelines.compare import CompareError
    from pipelines.config import ConfigError
    from pipelines.data import DataError
    from pipelines.posteriordb import PosteriorDBError
    from pipelines.registry import RegistryError
    from pipelines.training import TrainingFailed

    try:
        return args.func(args)
    except (ConfigError, DataError, RegistryError, PosteriorDBError, CompareError) as exc:
        print(f"viops {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except TrainingFailed as exc:
        where = f" (MLflow run {exc.run_id} marked FAILED)" if exc.run_id else ""
        print(f"viops {args.command}: training failed: {exc}{where}", file=sys.stderr)
        return EXIT_TRAINING_FAILED


if __name__ == "__main__":
    sys.exit(main())
