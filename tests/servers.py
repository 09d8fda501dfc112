"""Real servers the tests start on 127.0.0.1: ``mlflow server`` on SQLite, and waiting for any HTTP server to answer.

One starter for every test that needs a tracking server (the integration fixture, the outage tests that kill it,
the basic-auth server), so that they run the same command a user would.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import SERVER_ARTIFACT_ROOT, free_port, mlflow_db, require

MLFLOW = Path(sys.executable).parent / "mlflow"


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, path: str = "/health", timeout: float = 120) -> None:
    """Poll ``url + path`` until it answers 200; fail with the log tail if the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args[0]} exited with {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}{path}", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    pytest.fail(f"{url}{path} did not answer within {timeout:.0f} s: {log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if the process has not exited within 20 s."""
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def start_mlflow_server(root: Path, *args: str, env: dict[str, str] | None = None,
                        own_session: bool = False) -> tuple[str, subprocess.Popen]:
    """``mlflow server`` on a SQLite store and an artifact folder under ``root``, with one worker; returns
    ``(url, process)`` once it answers ``/health``. ``args``: more options (``--app-name basic-auth``); ``env``: more
    environment variables; ``own_session``: in a process group of its own, so that :func:`kill_server` can SIGKILL
    the server with its workers. Its output goes to ``root / "server.log"``."""
    command = str(MLFLOW) if MLFLOW.exists() else shutil.which("mlflow")
    require(command is not None, "the mlflow CLI is not installed")
    port = free_port()
    with open(root / "server.log", "w") as log:
        proc = subprocess.Popen(
            [command, "server", *args, "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
             "--backend-store-uri", mlflow_db(root / "backend.db", SERVER_ARTIFACT_ROOT),
             "--artifacts-destination", str(root / "artifacts")],
            stdout=log, stderr=subprocess.STDOUT, cwd=root, start_new_session=own_session,
            # MLflow's job runners (a pool of ~8 processes per server) serve nothing these tests use
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})},
        )
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, proc, root / "server.log")
    return url, proc


def kill_server(proc: subprocess.Popen) -> None:
    """SIGKILL a server started with ``own_session`` and every worker it started."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)
