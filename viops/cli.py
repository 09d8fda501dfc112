"""The ``viops`` command: every subcommand of the product in one parser (``python -m viops`` is the same).

Every failure is one line on stderr and an exit code from one table (README.md#exit-codes): 1 a negative
verdict, 2 bad input (nothing changed in the registry), 3 training diverged, 4 the tracking server or the disk failed
the command, 5 another operation on the model holds its lease, 6 a version's files fail their signature check.
docs/architecture.md shows which layer each command calls.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from importlib.metadata import PackageNotFoundError, version

from viops.commands import deploy, diagnostics, monitoring, registry, stack, training
from viops.commands.common import (
    EXIT_BAD_INPUT,
    EXIT_BUSY,
    EXIT_INFRASTRUCTURE,
    EXIT_REJECTED,
    EXIT_TRAINING_FAILED,
    EXIT_UNTRUSTED,
)

__all__ = ["main", "entry_point", "build_parser", "quiet_libraries"]


def _version() -> str:
    try:
        return version("viops")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """The ``viops`` parser with every command."""
    parser = argparse.ArgumentParser(prog="viops", description="Production MLOps for variational-inference models.")
    parser.add_argument("--version", action="version", version=f"viops {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (training, diagnostics, registry, deploy, monitoring, stack):
        group.add_commands(sub)
    for name, command in sub.choices.items():
        _finish_help(name, command)
    return parser


#: Examples at the end of each command's --help (the README's "Using it" block runs most of them).
EXAMPLES = {
    "prepare": ["viops prepare --config configs/examples/blr_csv.yaml --out prepared/ "
                "--extra-data configs/examples/window.csv"],
    "train": ["viops train --config configs/examples/blr_csv.yaml",
              "viops train --config configs/examples/blr_csv.yaml --set train.max_epochs=60 --json",
              "viops train --config configs/examples/blr_csv.yaml --prepared prepared/ --no-register"],
    "runs": ["viops runs reap --experiment blr-example --stale-after 600"],
    "register": ["viops register --run-id 3f2a9c... --model blr-example"],
    "conformance": ["viops conformance --posterior sblri-blr --family full_rank", "viops conformance --json"],
    "compare": ["viops compare --experiment blr-example --sort test_predictive_nll",
                "viops compare --experiment blr-example --metric psis_khat --format csv > runs.csv"],
    "diagnose": ["viops diagnose --sbc --config configs/examples/blr_csv.yaml"],
    "evaluate": ["viops evaluate --model blr-example --candidate 2", "viops evaluate --model blr-example "
                 "--candidate 3 --against 1"],
    "promote": ['viops promote --model blr-example --version 2 --reason "new labels"'],
    "rollback": ['viops rollback --model blr-example --reason "calibration broke"'],
    "deploy": ["viops deploy status --model blr-diabetes", "viops deploy start --model blr-diabetes --version 2",
               'viops deploy reject --model blr-diabetes --version 2 --reason "worse NLL on live data"'],
    "score": ["viops score --model blr-example@champion --input configs/examples/new_rows.csv "
              "--output predictions.parquet"],
    "verify": ["VIOPS_VERIFY_KEY=keys/verify.pem viops verify --model blr-example/2"],
    "serve": ["viops serve --model blr-example@champion --port 5001"],
    "keys": ["viops keys generate --out keys/"],
    "simulate": ["viops simulate --config configs/scenarios/diabetes_covariate_shift.yaml --out windows/"],
    "monitor": ['viops monitor --model blr-diabetes --window "windows/window=2026-01-01T08:00:00Z/data.parquet"',
                "viops monitor --model blr-diabetes --window w.parquet --fail-on page --json"],
    "alerts": ["viops alerts --out monitoring/prometheus/alerts.yml"],
    "dashboards": ["viops dashboards --out monitoring/grafana/dashboards",
                   "viops dashboards --snapshot http://127.0.0.1:9090 --since 1800 --out dashboards/"],
    "stack": ["viops stack up", "viops stack up --only mlflow,monitoring --dir /tmp/viops-stack",
              "viops stack down --drop-databases"],
    "alert-receiver": ["VIOPS_ALERT_RECEIVER_TOKEN=... VIOPS_AIRFLOW_URL=http://127.0.0.1:8080 "
                       "viops alert-receiver --port 9095 --state-dir .stack/alert-receiver"],
}

_TRACKING_URI_HELP = ("MLflow tracking and registry URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in "
                      "the working directory); prefer the variable for a URI with a password")


def _finish_help(name: str, command: argparse.ArgumentParser) -> None:
    """Examples as the command's epilog; the one help text of ``--tracking-uri`` wherever it has none."""
    command.formatter_class = argparse.RawDescriptionHelpFormatter
    if name in EXAMPLES:
        command.epilog = "examples:\n" + "\n".join(f"  {line}" for line in EXAMPLES[name])
    for action in command._actions:
        if "--tracking-uri" in action.option_strings and not action.help:
            action.help = _TRACKING_URI_HELP


def quiet_libraries() -> None:
    """Keep MLflow, Alembic and Lightning start-up chatter out of the command's own output (and the demos' logs)."""
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # MLflow writes "View run ... at: <tracking URI>" to stdout, password included.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    from pipelines.tracking import bound_request_time

    bound_request_time()
    warnings.filterwarnings("ignore", category=UserWarning, module=r"pytorch_lightning.*")
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)  # each retry; the failure is one line
    for name in ("alembic", "mlflow.store.db.utils", "mlflow.tracking", "mlflow.models", "mlflow.pyfunc"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Lightning's rank-zero INFO lines ("GPU available", the litlogger tip, "`Trainer.fit` stopped") are chatter
    # wherever they go, also when Airflow's logging has replaced the handlers below (training after a dag.test).
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Warnings and errors on stderr, URIs' secrets masked, Lightning's INFO lines dropped. Set before Lightning is
    # imported: it adds a handler of its own only when the root logger has none.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_redact_record)
        handler.addFilter(_no_lightning_chatter)


def _no_lightning_chatter(record: logging.LogRecord) -> bool:
    """A logging filter: Lightning's INFO lines ("Tip: ... litlogger", "GPU available", "validation will run after
    every batch", "`Trainer.fit` stopped") are dropped; its warnings and errors are kept. (Lightning sets its
    top-level loggers' level when it is imported, so a level set on those here would not hold; the rank-zero
    loggers' level, set in :func:`quiet_libraries`, holds wherever the handlers come from.)"""
    return record.levelno >= logging.WARNING or not record.name.startswith(("pytorch_lightning", "lightning"))


def _redact_record(record: logging.LogRecord) -> bool:
    """A logging filter: the formatted message with passwords and tokens in URIs masked."""
    from pipelines.tracking import redact

    message = record.getMessage()
    masked = redact(message)
    if masked != message:
        record.msg, record.args = masked, None
    return True


def entry_point() -> None:
    """The ``viops`` console script and ``python -m viops``: :func:`main` as the life of its own process."""
    from viops.process import run_as_process

    run_as_process(main)


def main(argv: list[str] | None = None) -> int:
    """Run one ``viops`` command (``argv``, or the process's arguments) and return its exit code."""
    args = build_parser().parse_args(argv)
    quiet_libraries()
    try:
        return args.func(args)
    except Exception as exc:
        return _failed(args, exc)


def _failed(args, exc: Exception) -> int:
    """Say on stderr, in one line, why the command failed, and return its exit code (README.md#exit-codes); re-raise
    what is none of the documented failures. Called only from :func:`main`'s ``except`` block.

    The failures' classes are imported here, when a command has failed, not before every command: their modules
    import MLflow (~2 s), which the commands that never talk to a tracking server (``alerts``, ``dashboards``,
    ``keys``, ``stack``) otherwise do without.
    """
    from mlflow.exceptions import MlflowException

    from pipelines.config.base import ConfigError
    from pipelines.diagnostics.compare import CompareError
    from pipelines.diagnostics.posteriordb import PosteriorDBError
    from pipelines.registry.lease import LeaseHeld
    from pipelines.registry.promotion import GateRejected
    from pipelines.registry.signing import SignatureInvalid, SigningKeyError
    from pipelines.registry.versions import RegistryError
    from pipelines.tables import DataError
    from pipelines.tracking import infrastructure_error, redact, resolve_tracking_uri
    from pipelines.training.durability import RunStillAlive
    from pipelines.training.result import TrainingFailed

    if isinstance(exc, (LeaseHeld, RunStillAlive)):
        print(f"viops {args.command}: busy: {exc}", file=sys.stderr)
        return EXIT_BUSY
    if isinstance(exc, GateRejected):
        print(redact(f"viops {args.command}: rejected by the gate: {' '.join(str(exc).split())}"), file=sys.stderr)
        return EXIT_REJECTED
    if isinstance(exc, SignatureInvalid):
        print(redact(f"viops {args.command}: {exc}; {_page(exc, args)}"), file=sys.stderr)
        return EXIT_UNTRUSTED
    if isinstance(exc, (ConfigError, DataError, RegistryError, PosteriorDBError, CompareError, SigningKeyError)):
        print(redact(f"viops {args.command}: error: {' '.join(str(exc).split())}"), file=sys.stderr)
        return EXIT_BAD_INPUT
    if isinstance(exc, TrainingFailed):
        where = f" (MLflow run {exc.run_id} marked FAILED)" if exc.run_id else ""
        print(redact(f"viops {args.command}: training failed: {exc}{where}"), file=sys.stderr)
        return EXIT_TRAINING_FAILED
    uri = resolve_tracking_uri(getattr(args, "tracking_uri", None))
    if isinstance(exc, MlflowException) and exc.error_code in ("PERMISSION_DENIED", "UNAUTHENTICATED"):
        print(redact(f"viops {args.command}: permission denied by the tracking server at {uri}: "
                     f"{' '.join(exc.message.split())}"), file=sys.stderr)  # refused: nothing was changed
        return EXIT_BAD_INPUT
    if isinstance(exc, MlflowException) and exc.error_code == "RESOURCE_DOES_NOT_EXIST":
        print(redact(f"viops {args.command}: not found by the tracking server at {uri}: "
                     f"{' '.join(exc.message.split())}"), file=sys.stderr)  # e.g. an unknown --run-id
        return EXIT_BAD_INPUT
    line = infrastructure_error(exc, uri)
    if line is None:
        raise  # the exception main() is handling, with its traceback
    print(f"viops {args.command}: {line}", file=sys.stderr)
    return EXIT_INFRASTRUCTURE


def _page(exc, args) -> str:
    """Push the refusal to the Pushgateway (``ViopsModelSignatureInvalid`` pages); say where it went."""
    from monitoring.metrics import export_signature_status

    gateway = getattr(args, "pushgateway", None) or os.environ.get("VIOPS_PUSHGATEWAY")
    export = export_signature_status(exc.model, exc.version, False, gateway)
    if export.pushed:
        return f"paged: viops_model_signature_valid=0 pushed to {gateway} (runbooks/ViopsModelSignatureInvalid.md)"
    return f"NOT paged: {export.error}; see runbooks/ViopsModelSignatureInvalid.md"


if __name__ == "__main__":
    sys.exit(main())
