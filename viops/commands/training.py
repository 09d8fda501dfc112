"""``viops prepare | train | register | conformance | compare``: data, training runs, and comparing them."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from viops.commands.common import client, common, emit

#: The posteriordb excerpt the project ships (seven regression posteriors with Stan NUTS reference draws).
BUNDLED_POSTERIORDB = Path(__file__).resolve().parents[2] / "benchmarks" / "posteriordb"


def _cmd_prepare(args) -> int:
    from pipelines.config.loading import load_config, parse_overrides
    from pipelines.training.data import check_trainable, prepare

    config = load_config(args.config, parse_overrides(args.set))
    data = prepare(config.data, extra=args.extra_data or ())
    check_trainable(data, config.model)  # what `viops train` would refuse, refused here already
    out = data.save(args.out)
    manifest = {**data.manifest(), "directory": str(out)}
    emit(manifest, args.json, f"prepared {data.num_rows} rows from {data.source} into {out} "
                               f"(fingerprint {data.fingerprint})")
    return 0


def _tags(pairs: list[str]) -> dict[str, str]:
    """``--tag KEY=VALUE`` pairs; a pair without ``=`` is bad input."""
    from pipelines.config.base import ConfigError

    tags = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--tag {pair!r}: expected KEY=VALUE")
        tags[key.strip()] = value
    return tags


def _push_training(result) -> None:
    """The training's summary to the Pushgateway ($VIOPS_PUSHGATEWAY), for the dashboards; silent without one."""
    gateway = os.environ.get("VIOPS_PUSHGATEWAY")
    if not gateway:
        return
    from mlflow import MlflowClient

    from monitoring.events import export_training

    metrics = MlflowClient(result.tracking_uri).get_run(result.run_id).data.metrics
    export_training(result.model_name, result.run_id, metrics, gateway)


def _cmd_train(args) -> int:
    from pipelines.config.loading import load_config, parse_overrides
    from pipelines.lifecycle.train import train
    from pipelines.training.data import load_prepared

    config = load_config(args.config, parse_overrides(args.set))
    prepared = load_prepared(args.prepared) if args.prepared else None
    result = train(
        config,
        prepared=prepared,
        tracking_uri=args.tracking_uri,
        register=False if args.no_register else None,
        run_name=args.run_name,
        tags={**({"viops.trigger_reason": args.reason} if args.reason else {}),
              **({"viops.overrides": " ".join(args.set)} if args.set else {}), **_tags(args.tag)} or None,
        resume=args.resume,
    )
    if result.rank:
        return 0  # a DDP worker: rank 0 reports
    _push_training(result)
    version = f"version {result.model_version} of {result.model_name}" if result.model_version else "not registered"
    resumed = f" (resumed from step {result.resumed_from_step})" if result.resumed_from_step is not None else ""
    human = (
        f"run {result.run_id}{resumed} finished: val ELBO/datum "
        f"{result.metrics.get('validation_elbo_per_datum', float('nan')):.4f}, "
        f"{result.metrics['steps']:.0f} steps in {result.metrics['train_seconds']:.1f}s; {version}"
        + (f" ({', '.join(result.aliases)})" if result.aliases else "")
        + (f"; rejected by the gate: {result.gate_rejection[0]}" if result.gate_rejection else "")
        + f"\n  look: mlflow ui --backend-store-uri {result.tracking_uri}"
    )
    emit(result.to_json(), args.json, human)
    return 0


def _cmd_runs(args) -> int:
    from pipelines.config.base import ConfigError
    from pipelines.registry.audit import default_actor
    from pipelines.training.durability import STALE_AFTER_SECONDS, reap

    mlflow_client, uri = client(args)
    if args.experiment:
        found = {name: mlflow_client.get_experiment_by_name(name) for name in args.experiment}
        unknown = [name for name, experiment in found.items() if experiment is None]
        if unknown:
            raise ConfigError(f"no experiment named {', '.join(map(repr, unknown))}")
        ids = [experiment.experiment_id for experiment in found.values()]
    else:
        ids = [e.experiment_id for e in mlflow_client.search_experiments()]
    reaped = reap(mlflow_client, ids, stale_after=args.stale_after or STALE_AFTER_SECONDS,
                  by=f"viops runs reap ({default_actor()})")
    payload = {"reaped": [{"run_id": run_id, "reason": reason} for run_id, reason in reaped], "tracking_uri": uri}
    emit(payload, args.json, "\n".join(f"run {run_id}: {reason}" for run_id, reason in reaped)
         or "no run has a stale heartbeat")
    return 0


def _cmd_register(args) -> int:
    from mlflow import MlflowClient

    from pipelines.registry.versions import register_run
    from pipelines.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    reg = register_run(client, args.run_id, args.model)
    emit({**reg.to_json(), "tracking_uri": uri}, args.json, reg.reason)
    return 0


def _cmd_conformance(args) -> int:
    from pipelines.diagnostics.conformance import format_table, run_conformance
    from pipelines.diagnostics.posteriordb import list_posteriors
    from pipelines.tracking import resolve_tracking_uri

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
    emit(payload, args.json, format_table(results))
    return 0


def _cmd_compare(args) -> int:
    from mlflow import MlflowClient

    from pipelines.diagnostics.compare import compare_experiment
    from pipelines.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri)
    comparison = compare_experiment(MlflowClient(tracking_uri=uri, registry_uri=uri), args.experiment,
                                    max_runs=args.max_runs).select(args.metric, args.sort)
    if args.format == "csv":
        sys.stdout.write(comparison.csv())
        return 0
    emit({**comparison.to_json(), "tracking_uri": uri}, args.json, comparison.table())
    return 0


def add_commands(sub) -> None:
    """Add the prepare, train, register, conformance, compare commands to the ``viops`` parser."""
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
    p.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE",
                   help="a tag on the MLflow run (repeatable), e.g. where it ran: viops.airflow.queue=gpu")
    p.add_argument("--resume", action="store_true",
                   help="continue the newest unfinished run of this config (and --run-name) from its last checkpoint, "
                        "in the same MLflow run; start a new run when there is none")
    p.set_defaults(func=_cmd_train)
    p = sub.add_parser("runs", help="training runs: 'reap' marks runs whose process died FAILED")
    p.add_argument("action", choices=["reap"])
    common(p, config=False)
    p.add_argument("--experiment", action="append", help="experiment name (repeatable; default: every experiment)")
    p.add_argument("--stale-after", type=float, help="seconds without a heartbeat (default $VIOPS_STALE_AFTER_SECONDS "
                                                     "or 300)")
    p.add_argument("--tracking-uri")
    p.set_defaults(func=_cmd_runs)
    p = sub.add_parser("register", help="register a finished training run (idempotent per run)")
    common(p, config=False)
    p.add_argument("--run-id", required=True, help="the finished training run to register")
    p.add_argument("--model", required=True, help="registered model name")
    p.add_argument("--tracking-uri")
    p.set_defaults(func=_cmd_register)
    p = sub.add_parser("conformance", help="fit posteriordb reference posteriors with each family; compare with NUTS")
    common(p, config=False)
    p.add_argument("--posteriordb", default=str(BUNDLED_POSTERIORDB),
                   help="a posteriordb folder, one sub-folder per posterior (default: the seven bundled in "
                        "benchmarks/posteriordb, BSD-3 licensed)")
    p.add_argument("--posterior", action="append", help="posterior name (repeatable; default: every one)")
    p.add_argument("--family", action="append", choices=["mean_field", "full_rank", "low_rank", "flow"],
                   help="variational family (repeatable; default: all four)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI for the fits (experiment viops-conformance)")
    p.add_argument("--seed", type=int, default=0, help="seed of every fit (default 0)")
    p.add_argument("--details", action="store_true", help="add every parameter's comparison to the JSON output")
    p.set_defaults(func=_cmd_conformance)
    p = sub.add_parser("compare", help="the finished runs of an MLflow experiment side by side, best per metric")
    common(p, config=False)
    p.add_argument("--experiment", required=True, help="MLflow experiment name (runs on one dataset share one)")
    p.add_argument("--tracking-uri")
    p.add_argument("--max-runs", type=int, default=100, help="newest runs to compare (default 100)")
    p.add_argument("--metric", action="append", metavar="NAME",
                   help="show only this metric (repeatable), e.g. test_predictive_nll or psis_khat")
    p.add_argument("--sort", metavar="NAME", help="order runs best first by this metric (runs without it last)")
    p.add_argument("--format", choices=["table", "csv"], default="table",
                   help="table (default) or csv on stdout: full run ids, unrounded metrics (--json: one JSON object)")
    p.set_defaults(func=_cmd_compare)
