"""Run a ``viops`` command in a child process and read its ``--json`` result.

Airflow tasks and ``viops monitor --execute`` train through this rather than in their own process: Lightning's DDP
launcher re-executes the entry script, and a child process keeps a crash or a GPU allocation from taking the worker
down with it. The child is the installed command line (``python -m viops``): its documented arguments and JSON
output are the interface, so no module of this layer imports the package above it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from pipelines.errors import NotRetryable

__all__ = ["CLIError", "CLIRefused", "run_viops", "VIOPS_COMMAND", "NOT_RETRYABLE_EXIT_CODES"]

#: The command line every child runs: this interpreter's ``viops`` (the same as the console script).
VIOPS_COMMAND = (sys.executable, "-m", "viops")


class CLIError(RuntimeError):
    """The child ``viops`` process failed; the message carries its exit code and error line."""

    def __init__(self, args: list[str], returncode: int, stderr: str):
        last = next((line for line in reversed(stderr.strip().splitlines()) if line.strip()), "(no output)")
        super().__init__(f"viops {args[0]} exited with code {returncode}: {last}")
        self.returncode, self.stderr = returncode, stderr


#: Exit codes (README.md#exit-codes) that the same command repeats: 1 a negative verdict (the gate rejected the
#: promotion), 2 bad input, 3 training diverged, 6 a version's files fail their signature check. 4 (the tracking
#: server or the disk failed) and 5 (busy) may pass on a retry.
NOT_RETRYABLE_EXIT_CODES = (1, 2, 3, 6)


class CLIRefused(CLIError, NotRetryable):
    """The child exited with one of :data:`NOT_RETRYABLE_EXIT_CODES`: running it again fails the same way."""


def run_viops(args: list[str], *, env: dict[str, str] | None = None, timeout: float | None = None,
              ok_codes: tuple[int, ...] = (0,)) -> dict:
    """Run ``viops <args> --json`` with this interpreter and return the JSON object on its last stdout line.

    Exit codes outside ``ok_codes`` raise :class:`CLIError` (:class:`CLIRefused` for a code that a retry repeats);
    ``viops evaluate`` exits 1 on a rejection, which a caller that branches on the verdict accepts. The result
    carries the code as ``exit_code``.
    """
    command = [*VIOPS_COMMAND, *args, "--json"]
    proc = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=timeout, check=False
    )
    if proc.stderr:
        sys.stderr.write(proc.stderr[-20_000:])
    if proc.returncode not in ok_codes:
        refused = proc.returncode in NOT_RETRYABLE_EXIT_CODES
        raise (CLIRefused if refused else CLIError)(args, proc.returncode, proc.stderr)
    lines = [line for line in proc.stdout.strip().splitlines() if line.strip()]
    if not lines:
        raise CLIError(args, proc.returncode, "no JSON result on stdout")
    return {**json.loads(lines[-1]), "exit_code": proc.returncode}
