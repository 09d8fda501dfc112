"""A real ``mlflow server`` on 127.0.0.1 for the integration tests of a module."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import SERVER_ARTIFACT_ROOT, free_port, mlflow_db, require


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
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    require(mlflow_bin.exists() or shutil.which("mlflow") is not None, "the mlflow CLI is not installed")
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(
        [str(mlflow_bin), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", mlflow_db(root / "backend.db", SERVER_ARTIFACT_ROOT),
         "--artifacts-destination", str(root / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, cwd=root,
        # MLflow's job runners (a pool of ~8 processes per server) serve nothing these tests use
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, proc, root / "server.log")
    yield url
    stop(proc)
    log.close()


