"""Champion/challenger against a real ``mlflow server``, every step through the ``viops`` CLI in its own process,
and HTTP predictions from ``viops serve NAME@champion`` (a real ``mlflow models serve`` of the champion's files).
Every version is signed, and checked before it is promoted, rolled back to, evaluated or served."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipelines.registry.signing import generate_keys
from tests.conftest import EXAMPLE_CONFIG, free_port, make_regression_csv, require
from tests.servers import stop, wait_healthy

pytestmark = pytest.mark.integration

MODEL = "blr-example"
TRAIN = ["--set", "train.max_epochs=60", "--set", "train.batch_size=64"]


def viops(env, cwd, *args) -> tuple[int, dict | None, str]:
    proc = subprocess.run([sys.executable, "-m", "viops", *args, "--json"], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)
    lines = [line for line in proc.stdout.strip().splitlines() if line.strip()]
    return proc.returncode, (json.loads(lines[-1]) if lines else None), proc.stderr


@pytest.fixture(scope="module")
def env(mlflow_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("lifecycle-server")
    (root / "blr.yaml").write_text(EXAMPLE_CONFIG.read_text())
    make_regression_csv(root / "data.csv", n=1200)
    private, public = generate_keys(root / "keys")
    # Both URIs: an in-process mlflow.set_*_uri elsewhere in the session writes them into os.environ. Every version
    # is signed when registered and checked (through the server's artifact proxy) before it is used.
    return {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server, "MLFLOW_REGISTRY_URI": mlflow_server,
            "VIOPS_AUDIT_LOG": str(root / "audit.jsonl"), "VIOPS_ACTOR": "pytest-oncall",
            "VIOPS_SIGNING_KEY": str(private), "VIOPS_VERIFY_KEY": str(public)}, root


def aliases(client, version: str) -> set[str]:
    return set(client.get_model_version(MODEL, version).aliases)


def test_gate_promotion_rollback_and_audit_against_a_real_server(mlflow_server, env):
    env, root = env
    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)

    # v1: the first version becomes champion through the gate's absolute thresholds.
    code, v1, err = viops(env, root, "train", "--config", "blr.yaml", *TRAIN)
    assert code == 0, err[-3000:]
    assert v1["model_version"] == "1" and set(v1["aliases"]) == {"champion", "challenger"}, v1["registration"]

    # v2, as good as v1: the gate passes on the same held-out rows; promotion moves both aliases.
    code, v2, err = viops(env, root, "train", "--config", "blr.yaml", *TRAIN, "--set", "train.seed=1")
    assert code == 0 and v2["aliases"] == ["challenger"], err[-3000:]
    code, verdict, err = viops(env, root, "evaluate", "--model", MODEL)  # candidate defaults to @challenger
    assert code == 0 and verdict["passed"], verdict and verdict["reasons"]
    assert verdict["candidate_version"] == "2" and verdict["champion_version"] == "1"
    assert verdict["metrics"]["champion"]["nll"] == pytest.approx(verdict["metrics"]["candidate"]["nll"], abs=0.05)
    code, promoted, err = viops(env, root, "promote", "--model", MODEL, "--version", "2", "--reason", "new labels")
    assert code == 0 and promoted["changed"], err
    assert aliases(client, "2") >= {"champion"} and aliases(client, "1") == {"previous-champion"}

    # v3, over-confident (noise scale 15x too small): rejected with reasons that name the thresholds.
    code, v3, err = viops(env, root, "train", "--config", "blr.yaml", *TRAIN, "--set", "model.noise.fixed=0.02")
    assert code == 0, err[-3000:]
    code, verdict, err = viops(env, root, "evaluate", "--model", MODEL, "--candidate", "3")
    assert code == 1 and not verdict["passed"]
    reasons = "\n".join(verdict["reasons"])
    # The model is wrong, not its fit: started at its Laplace approximation, q matches this model's own posterior
    # (k-hat is fine); what the gate sees is the predictive failing on held-out data.
    assert "nll_tolerance" in reasons and "coverage_90" in reasons, reasons
    assert client.get_model_version(MODEL, "3").tags["viops.gate.passed"] == "false"
    assert client.get_model_version_by_alias(MODEL, "champion").version in (2, "2")  # champion unchanged
    code, _, err = viops(env, root, "promote", "--model", MODEL, "--version", "3")
    assert code == 1 and "rejected by the gate: version 3" in err  # a negative verdict

    # Rollback: champion back to v1, v2 tagged; a retry changes nothing.
    code, rolled, err = viops(env, root, "rollback", "--model", MODEL, "--reason", "calibration broke in production")
    assert code == 0 and rolled["changed"] and (rolled["from_version"], rolled["to_version"]) == ("2", "1"), err
    assert "champion" in aliases(client, "1")
    demoted = client.get_model_version(MODEL, "2").tags
    assert demoted["viops.rolled_back"] == "true" and demoted["viops.rollback_reason"] == "calibration broke in production"
    code, again, _ = viops(env, root, "rollback", "--model", MODEL, "--reason", "calibration broke in production")
    assert code == 0 and not again["changed"] and "champion" in aliases(client, "1")

    # The audit trail has both changes, in MLflow and in the local file, with reason, verdict, actor and time.
    lines = [json.loads(line) for line in (root / "audit.jsonl").read_text().splitlines()]
    assert [(r["action"], r["from_version"], r["to_version"]) for r in lines] == [
        ("promote", None, "1"), ("promote", "1", "2"), ("rollback", "2", "1")]
    assert lines[1]["reason"] == "new labels" and lines[1]["verdict"]["passed"] is True
    assert lines[2]["actor"] == "pytest-oncall" and lines[2]["time"]
    experiment = client.get_experiment_by_name("viops-audit")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    assert [(r.data.tags["viops.audit.action"], r.data.tags["viops.audit.to_version"]) for r in runs] == [
        ("promote", "1"), ("promote", "2"), ("rollback", "1")]

    # Rollback with no previous champion: refused with a non-zero exit; the champion is untouched.
    code, _, err = viops(env, root, "register", "--run-id", v1["run_id"], "--model", "blr-solo")
    assert code == 0
    code, _, err = viops(env, root, "promote", "--model", "blr-solo", "--version", "1")
    assert code == 0
    code, payload, err = viops(env, root, "rollback", "--model", "blr-solo", "--reason", "pytest")
    assert code == 2 and payload is None and "no previous-champion" in err
    assert client.get_model_version_by_alias("blr-solo", "champion").version in (1, "1")


def test_viops_serve_verifies_then_returns_predictive_mean_and_uncertainty(mlflow_server, env):
    env, root = env
    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    if not client.search_model_versions(f"name='{MODEL}'"):  # run alone: train a champion first
        code, _, err = viops(env, root, "train", "--config", "blr.yaml", *TRAIN)
        assert code == 0, err[-3000:]
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    require(mlflow_bin.exists(), "the mlflow CLI is not installed")
    port = free_port()
    log_path = root / "serve.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(  # checks the champion's signature, then execs `mlflow models serve` on its files
            [sys.executable, "-m", "viops", "serve", "--model", f"{MODEL}@champion", "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, cwd=root,
            # The server execs `uvicorn` from PATH: the venv's bin must be on it, as it is once the venv is active.
            env={**env, "PATH": f"{mlflow_bin.parent}{os.pathsep}{env.get('PATH', '')}",
                 "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"},
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_healthy(url, proc, log_path, path="/ping", timeout=180)
            body = {"dataframe_split": {"columns": ["x0", "x1", "x2"], "data": [[0.0, 0.0, 0.0], [1.0, 0.0, 1.0]]}}
            request = urllib.request.Request(f"{url}/invocations", data=json.dumps(body).encode(),
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=60) as resp:
                predictions = json.loads(resp.read())["predictions"]
            body["dataframe_split"]["data"][1][1] = float("nan")  # a row the model cannot score: 400, said why
            request = urllib.request.Request(f"{url}/invocations", data=json.dumps(body).encode(),
                                             headers={"Content-Type": "application/json"})
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=60)
            assert refused.value.code == 400
            message = json.loads(refused.value.read())["message"]
            assert "input has 1 NaN/inf value(s), first in column 'x1' at row 1" in message, message
        finally:
            stop(proc)
    assert f"of {MODEL} (signature verified) from " in log_path.read_text()
    assert [sorted(p) for p in predictions] == [["mean", "q05", "q95", "sd"]] * 2
    first, second = predictions
    assert first["mean"] == pytest.approx(0.7, abs=0.1) and second["mean"] == pytest.approx(3.2, abs=0.1)
    for p in predictions:
        assert p["q05"] < p["mean"] < p["q95"] and 0.2 < p["sd"] < 0.5  # the noise SD is 0.3
