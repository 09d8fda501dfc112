"""What every ``viops`` command shares: exit codes, common arguments, the MLflow client, and the output contract.

Each command prints human-readable progress on stderr; with ``--json`` the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys

from viops import REPO

__all__ = ["EXIT_OK", "EXIT_REJECTED", "EXIT_BAD_INPUT", "EXIT_TRAINING_FAILED", "REPO", "common", "client", "emit"]

EXIT_OK = 0
EXIT_REJECTED = 1  # viops evaluate: the gate rejected the candidate (the verdict is printed all the same)
EXIT_BAD_INPUT = 2
EXIT_TRAINING_FAILED = 3


def emit(payload: dict, as_json: bool, human: str) -> None:
    """Print a command's result: ``human`` on stdout, or on stderr with ``payload`` as the last line of stdout."""
    if as_json:
        print(human, file=sys.stderr)
        print(json.dumps(payload, default=str))
    else:
        print(human)


def common(p: argparse.ArgumentParser, config: bool = True) -> None:
    """``--config``/``--set`` (when the command reads a training config) and ``--json``."""
    if config:
        p.add_argument("--config", required=True, help="YAML config file")
        p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")


def client(args):
    """``(MlflowClient, tracking URI)`` for ``--tracking-uri`` (default ``$MLFLOW_TRACKING_URI``, else local SQLite)."""
    from mlflow import MlflowClient

    from pipelines.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri), uri
