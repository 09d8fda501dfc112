"""The fault suite: each test breaks one thing a production deployment meets (the tracking server, a process, the
disk, the input) and checks what viops does: a documented exit code, one line saying what failed, nothing changed
that should not be. Commands run as real processes, against real MLflow stores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import EXAMPLE_CONFIG, make_regression_csv, mlflow_db, mlflow_environment_kept

#: The exit codes README.md#exit-codes documents.
DOCUMENTED_EXIT_CODES = {0, 1, 2, 3, 4, 5, 6}


@dataclass
class Ran:
    """One finished ``viops`` process."""

    code: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def result(self) -> dict:
        """The ``--json`` object on the last stdout line."""
        return json.loads(self.stdout.strip().splitlines()[-1])

    @property
    def last_line(self) -> str:
        lines = [line for line in self.stderr.strip().splitlines() if line.strip()]
        return lines[-1] if lines else ""


def start(args: list[str], env: dict | None = None, cwd: Path | None = None) -> subprocess.Popen:
    """``viops <args> --json`` as a background process."""
    return subprocess.Popen([sys.executable, "-m", "viops", *args, "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}, cwd=cwd)


def finish(proc: subprocess.Popen, started: float, timeout: float = 300) -> Ran:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"viops {proc.args[3]} did not finish within {timeout:.0f} s: {err[-3000:]}")
    return Ran(proc.returncode, out, err, time.monotonic() - started)


def viops(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 300) -> Ran:
    """Run ``viops <args> --json`` to the end."""
    started = time.monotonic()
    return finish(start(list(args), env, cwd), started, timeout)


def train_here(root: Path, uri: str, *overrides: str, env: dict | None = None):
    """Set-up, not a command under test: ``root/blr_csv.yaml`` trained and registered in this process (as ``viops
    train`` would from ``root``, with ``env`` set), which spares a fixture the start-up of a training process."""
    from pipelines.config.loading import load_config, parse_overrides
    from pipelines.lifecycle.train import train

    # the tracking URI that mlflow.set_tracking_uri writes into the environment goes with the training
    with mlflow_environment_kept(), pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        for name, value in (env or {}).items():
            patch.setenv(name, value)
        return train(load_config(root / "blr_csv.yaml", parse_overrides(list(overrides))), tracking_uri=uri)


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """The README's example config and data in a folder, trained once into a SQLite store: version 1 is champion.
    Returns ``(folder, tracking URI)``."""
    root = tmp_path_factory.mktemp("faults")
    (root / "blr_csv.yaml").write_text(EXAMPLE_CONFIG.read_text())
    make_regression_csv(root / "data.csv")
    uri = mlflow_db(root / "mlflow.db")
    trained = train_here(root, uri)
    assert trained.model_version == "1" and "champion" in trained.aliases, trained.registration
    return root, uri
