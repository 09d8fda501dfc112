"""What every ``viops`` command shares: exit codes, common arguments, the MLflow client, and the output contract.

Each command prints human-readable progress on stderr; with ``--json`` the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys

from viops import REPO

__all__ = ["EXIT_OK", "EXIT_REJECTED", "EXIT_BAD_INPUT", "EXIT_TRAINING_FAILED", "EXIT_INFRASTRUCTURE", "EXIT_BUSY",
           "EXIT_UNTRUSTED", "EXIT_CODES", "REPO", "common", "client", "emit", "json_object"]

#: The exit codes of every command (README.md#exit-codes).
EXIT_OK = 0
EXIT_REJECTED = 1  # a negative verdict: the gate rejected the candidate or its promotion; monitor --fail-on
EXIT_BAD_INPUT = 2  # bad config, data, window or arguments; nothing was trained, registered or changed
EXIT_TRAINING_FAILED = 3  # training diverged; the MLflow run is FAILED
EXIT_INFRASTRUCTURE = 4  # tracking server unreachable, tracking store unusable, disk read-only or full
EXIT_BUSY = 5  # another retrain/promote/rollback of the same model holds its lease; nothing was done
EXIT_UNTRUSTED = 6  # a version's files fail its signature check: refused, nothing loaded or changed, paged
EXIT_CODES = (EXIT_OK, EXIT_REJECTED, EXIT_BAD_INPUT, EXIT_TRAINING_FAILED, EXIT_INFRASTRUCTURE, EXIT_BUSY,
              EXIT_UNTRUSTED)


def emit(payload: dict, as_json: bool, human: str) -> None:
    """Print a command's result: ``human`` on stdout, or on stderr with ``payload`` as the last line of stdout.
    Passwords and tokens in URIs are masked in both."""
    from pipelines.tracking import redact

    human = redact(human)
    if as_json:
        print(human, file=sys.stderr)
        print(redact(json.dumps(payload, default=str)))
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


def json_object(text: str | None, flag: str) -> dict:
    """The JSON object an argument such as ``--trigger`` holds ({} when not given).

    Raises:
        ConfigError: not JSON, or not an object; the message names the flag.
    """
    from pipelines.config.base import ConfigError

    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{flag} must be a JSON object: {exc}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{flag} must be a JSON object, got {type(value).__name__}")
    return value
