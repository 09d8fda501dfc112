"""``viops train`` against a real ``mlflow server`` on 127.0.0.1, read back through ``MlflowClient``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from tests.conftest import EXAMPLE_CONFIG, make_regression_csv

pytestmark = pytest.mark.integration


def test_train_against_server_and_read_everything_back(mlflow_server, tmp_path):
    (tmp_path / "blr_csv.yaml").write_text(EXAMPLE_CONFIG.read_text())
    make_regression_csv(tmp_path / "data.csv", n=1200)
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server, "MLFLOW_REGISTRY_URI": mlflow_server}
    proc = subprocess.run(
        [sys.executable, "-m", "viops", "train", "--config", str(tmp_path / "blr_csv.yaml"), "--json",
         "--set", "train.max_epochs=60", "--set", "train.batch_size=64", "--set", "train.log_every_n_steps=200"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["tracking_uri"] == mlflow_server
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()

    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED"

    # Per-step telemetry: one row per window of train.metrics_every_n_steps (10) steps, at the window's last step,
    # for each series, sent in batches.
    steps = int(result["metrics"]["steps"])
    ends = sorted({min(step // 10 * 10 + 9, steps - 1) for step in range(steps)})
    for key in ("elbo", "expected_log_likelihood", "kl", "grad_norm/total", "grad_norm/loc",
                "grad_norm/scale_unconstrained", "nan_count", "lr"):
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in history) == ends, key
    lrs = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "lr"), key=lambda m: m.step)]
    assert lrs[0] == pytest.approx(0.01, rel=1e-3) and lrs[-1] < lrs[0] / 10  # the annealed schedule
    # Every validation (at least 20 a run), written through the telemetry writer with the step metrics.
    validations = client.get_metric_history(run.info.run_id, "val_elbo")
    assert len(validations) >= 20 and len({m.step for m in validations}) == len(validations)
    assert "val_predictive_nll" in run.data.metrics and "final/test_predictive_nll" in run.data.metrics
    for key in ("final/psis_khat", "final/coverage_50", "final/coverage_90", "final/pit_ks"):
        assert key in run.data.metrics, key

    # Params are the resolved config; tags carry fingerprint, commit and config hash.
    assert run.data.params["train.lr"] == "0.01" and run.data.params["model.noise.fixed"] == "0.3"
    for tag in ("viops.data_fingerprint", "viops.config_hash", "git_commit", "viops.model_kind"):
        assert run.data.tags.get(tag), tag
    assert run.data.tags["viops.data_fingerprint"] == result["data_fingerprint"]

    # Artifacts.
    paths = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config", "elbo_curve.png", "posterior_summary.json", "reference", "checkpoints"} <= paths
    assert {a.path for a in client.list_artifacts(run.info.run_id, "reference")} >= {"reference/features.parquet"}
    assert {a.path for a in client.list_artifacts(run.info.run_id, "diagnostics")} == {"diagnostics/pit_histogram.png"}
    summary = json.loads(Path(mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="posterior_summary.json", tracking_uri=mlflow_server)).read_text())
    assert len(summary["weights"]["mean"]) == 3 and len(summary["intercept"]["sd"]) == 1

    # The dataset is recorded as a run input.
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.name == f"train-{result['data_fingerprint']}"

    # Registered as champion (first version) and challenger; the pyfunc returns predictive uncertainty.
    version = client.get_model_version_by_alias("blr-example", "champion")
    assert version.version == str(result["model_version"]) and version.run_id == run.info.run_id
    assert set(client.get_model_version("blr-example", version.version).aliases) == {"champion", "challenger"}
    mlflow.set_tracking_uri(mlflow_server)
    mlflow.set_registry_uri(mlflow_server)  # an earlier in-process train() may have left another registry set
    model = mlflow.pyfunc.load_model("models:/blr-example@champion")
    import pandas as pd

    pred = model.predict(pd.DataFrame({"x0": [0.0, 1.0], "x1": [0.0, 0.0], "x2": [0.0, 1.0]}))
    assert list(pred.columns) == ["mean", "sd", "q05", "q95"]
    assert (pred.q05 < pred["mean"]).all() and (pred["mean"] < pred.q95).all() and (pred.sd > 0).all()
    assert pred["mean"].iloc[0] == pytest.approx(0.7, abs=0.1) and pred["mean"].iloc[1] == pytest.approx(3.2, abs=0.1)
