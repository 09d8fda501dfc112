"""kill -9 during training: the run is not left RUNNING forever (its stale heartbeat gets it reaped), its
checkpoint survives in the checkpoint folder, and ``viops train --resume`` finishes it in the same MLflow run."""

from __future__ import annotations

import os
import signal
import time

import pytest
from mlflow import MlflowClient

from pipelines.training.durability import RunStillAlive, find_resumable, reap
from tests.conftest import EXAMPLE_CONFIG, make_regression_csv, mlflow_db
from tests.faults.conftest import start, viops

LONG = ["--set", "train.max_epochs=600", "--set", "train.early_stopping.enabled=false",
        "--set", "train.checkpoint_every_seconds=1", "--set", "train.log_every_n_steps=50"]


def _wait_for(path_glob, root, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = list(root.glob(path_glob))
        if found:
            return found[0]
        time.sleep(0.5)
    raise AssertionError(f"nothing matched {path_glob} under {root} within {timeout:.0f} s")


def test_a_killed_training_is_reaped_and_resumed_in_the_same_run(tmp_path):
    (tmp_path / "blr_csv.yaml").write_text(EXAMPLE_CONFIG.read_text())
    make_regression_csv(tmp_path / "data.csv")
    uri = mlflow_db(tmp_path / "mlflow.db")
    env = {"MLFLOW_TRACKING_URI": uri, "VIOPS_WORK_DIR": str(tmp_path / "work")}
    config = str(tmp_path / "blr_csv.yaml")
    trainer = start(["train", "--config", config, *LONG], env=env, cwd=tmp_path)
    checkpoint = _wait_for("work/checkpoints/*/last.ckpt", tmp_path)
    # Frozen mid-fit (its first checkpoint comes a second into 6,600 steps): the checks below cannot race the end of
    # a fit that a quiet machine runs in a few seconds. Its telemetry writer, a process of its own, keeps delivering.
    os.kill(trainer.pid, signal.SIGSTOP)
    run_id = checkpoint.parent.name
    client = MlflowClient(uri, uri)
    deadline = time.monotonic() + 60
    while not client.get_metric_history(run_id, "elbo") and time.monotonic() < deadline:
        time.sleep(0.2)  # some steps' telemetry has reached MLflow

    # While it trains (checked in this process: quick enough to catch it training), resuming it is refused and
    # reaping spares it.
    experiment = client.get_run(run_id).info.experiment_id
    config_hash = client.get_run(run_id).data.tags["viops.config_hash"]
    with pytest.raises(RunStillAlive, match=f"run {run_id} is still training"):
        find_resumable(client, experiment, config_hash, str(tmp_path / "work" / "checkpoints"))
    assert reap(client, [experiment]) == []
    assert trainer.poll() is None, "training ended before it was killed"
    os.kill(trainer.pid, signal.SIGKILL)
    trainer.wait()
    assert client.get_run(run_id).info.status == "RUNNING"  # nobody could end it

    # Its process is gone (same host): the reaper need not wait for the heartbeat to go stale.
    reaped = viops("runs", "reap", env=env, cwd=tmp_path)
    assert reaped.code == 0 and [r["run_id"] for r in reaped.result["reaped"]] == [run_id], reaped.stderr
    dead = client.get_run(run_id)
    assert dead.info.status == "FAILED" and "no longer exists" in dead.data.tags["viops.failure_reason"]

    resumed = viops("train", "--config", config, *LONG, "--resume", env=env, cwd=tmp_path)
    assert resumed.code == 0, resumed.stderr[-3000:]
    result = resumed.result
    assert result["run_id"] == run_id and result["resumed_from_step"] > 0
    assert result["metrics"]["steps"] == 600 * 11  # 2,800 training rows in batches of 256: 11 steps an epoch
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["viops.resumed_from_step"] == str(
        result["resumed_from_step"])
    steps = [m.step for m in client.get_metric_history(run_id, "elbo")]
    assert min(steps) < result["resumed_from_step"] < max(steps)  # one curve, before and after the kill
    assert not checkpoint.parent.exists()  # a finished run's checkpoints are removed
    assert result["model_version"] == "1"  # registered once, from the resumed run


def test_resume_without_an_unfinished_run_starts_a_new_one(tmp_path):
    (tmp_path / "blr_csv.yaml").write_text(EXAMPLE_CONFIG.read_text())
    make_regression_csv(tmp_path / "data.csv")
    env = {"MLFLOW_TRACKING_URI": mlflow_db(tmp_path / "mlflow.db"), "VIOPS_WORK_DIR": str(tmp_path / "work")}
    ran = viops("train", "--config", str(tmp_path / "blr_csv.yaml"), "--resume", "--no-register", env=env,
                cwd=tmp_path)
    assert ran.code == 0 and ran.result["resumed_from_step"] is None, ran.stderr[-2000:]
