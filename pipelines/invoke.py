"""Run the ``viops`` CLI in a child process and read its ``--json`` result.

Airflow tasks train through this rather than in the worker process: Lightning's DDP launcher re-executes the entry
script, and a child process keeps a crash or a GPU allocation from taking the worker down with it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["CLIError", "run_viops", "work_dir", "audit_log", "safe_key"]


class CLIError(RuntimeError):
    """The child ``viops`` process failed; the message carries its exit code and error line."""

    def __init__(self, args: list[str], returncode: int, stderr: str):
        last = next((line for line in reversed(stderr.strip().splitlines()) if line.strip()), "(no output)")
        super().__init__(f"viops {args[0]} exited with code {returncode}: {last}")
        self.returncode, self.stderr = returncode, stderr


def run_viops(args: list[str], *, env: dict[str, str] | None = None, timeout: float | None = None,
              ok_codes: tuple[int, ...] = (0,), module: str = "pipelines.cli") -> dict:
    """Run ``viops <args> --json`` with this interpreter and return the JSON object on its last stdout line.

    Exit codes outside ``ok_codes`` raise :class:`CLIError` (``viops evaluate`` exits 1 on a rejection, which a
    caller that branches on the verdict accepts); the result carries the code as ``exit_code``. ``module`` is the
    CLI to run: ``monitoring.cli`` for the monitoring commands (it has every command).
    """
    command = [sys.executable, "-m", module, *args, "--json"]
    proc = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=timeout, check=False
    )
    if proc.stderr:
        sys.stderr.write(proc.stderr[-20_000:])
    if proc.returncode not in ok_codes:
        raise CLIError(args, proc.returncode, proc.stderr)
    lines = [line for line in proc.stdout.strip().splitlines() if line.strip()]
    if not lines:
        raise CLIError(args, proc.returncode, "no JSON result on stdout")
    return {**json.loads(lines[-1]), "exit_code": proc.returncode}


def work_dir() -> Path:
    """Scratch space for prepared data: ``$VIOPS_WORK_DIR``, else a ``viops`` folder in the system temp dir."""
    path = Path(os.environ.get("VIOPS_WORK_DIR") or Path(tempfile.gettempdir()) / "viops")
    path.mkdir(parents=True, exist_ok=True)
    return path


def audit_log() -> Path:
    """The local audit file for automated changes: ``$VIOPS_AUDIT_LOG``, else ``audit.jsonl`` in :func:`work_dir`."""
    return Path(os.environ.get("VIOPS_AUDIT_LOG") or work_dir() / "audit.jsonl")


def safe_key(text: str) -> str:
    """A filesystem-safe version of an Airflow run id (``manual__2026-01-01T00:00:00+00:00`` ...)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "run"
