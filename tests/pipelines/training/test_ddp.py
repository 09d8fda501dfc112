"""Lightning DDP from config: two CPU processes (gloo) train one run, each on its own shard of every epoch."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from mlflow import MlflowClient

from pipelines.training.svi_module import IndexBatches
from tests.conftest import REPO, make_regression_csv


def test_each_rank_gets_its_own_shard_of_the_same_permutation():
    shards = [list(IndexBatches(10, 2, shuffle=True, seed=3, rank=r, world_size=3)) for r in range(3)]
    rows = [torch.cat(s).tolist() for s in shards]
    assert [len(r) for r in rows] == [4, 4, 4]  # ceil(10 / 3) each, padded by wrapping around
    assert set(rows[0]) | set(rows[1]) | set(rows[2]) == set(range(10))
    assert len(rows[0] + rows[1] + rows[2]) - 10 == 2  # only the two wrapped rows appear twice


def test_ddp_with_two_gloo_processes_trains_one_run(tmp_path):
    make_regression_csv(tmp_path / "data.csv", n=2000)
    (tmp_path / "c.yaml").write_text(
        "name: ddp-blr\ndata: {path: data.csv, target: y}\nmodel: {noise: {fixed: 0.3}}\n"
        "train: {batch_size: 100, max_epochs: 40, accelerator: cpu, devices: 2, strategy: ddp, steps_per_batch: 1,"
        " progress_bar: false}\n"
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(REPO)}
    env.pop("VIOPS_DDP_RUN_ID", None)
    proc = subprocess.run(
        [sys.executable, "-m", "viops", "train", "--config", str(tmp_path / "c.yaml"), "--json"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, proc.stdout  # one report: rank 1 trains but prints nothing
    result = json.loads(lines[0])
    client = MlflowClient(uri)
    runs = client.search_runs([result["experiment_id"]])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # both ranks joined one run
    run = runs[0]
    assert run.data.tags["viops.world_size"] == "2"
    train_rows = 2000 - 2 * 300  # 15% validation, 15% test
    # Each rank steps through its half of the rows: half the steps of one process per epoch.
    assert result["metrics"]["steps"] == math.ceil(train_rows / 2 / 100) * 40
    # The N/|B| scaling is that of the full data: rank 0's per-step ELBO estimates the full-data ELBO (with the
    # shard size as N it would be about half of it) ...
    steps = client.get_metric_history(run.info.run_id, "elbo")
    last = sorted(steps, key=lambda m: m.step)[-20:]
    step_elbo = sum(m.value for m in last) / len(last)
    assert step_elbo == pytest.approx(run.data.metrics["final/train_elbo"], rel=0.1)
    # ... and DDP over 2 x 100 rows is SVI with minibatches of 200: same posterior as one process at batch 200.
    import mlflow

    from pipelines.config.loading import load_config, parse_overrides
    from pipelines.lifecycle.train import train

    mlflow.set_tracking_uri(uri)
    ddp = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/posterior_summary.json")
    single = train(load_config(tmp_path / "c.yaml", parse_overrides(
        ["train.devices=1", "train.strategy=auto", "train.batch_size=200"])), tracking_uri=uri, register=False)
    assert single.metrics["steps"] == result["metrics"]["steps"]
    reference = mlflow.artifacts.load_dict(f"runs:/{single.run_id}/posterior_summary.json")
    for block in ("weights", "intercept"):
        for got, want in zip(ddp[block]["mean"], reference[block]["mean"]):
            assert got == pytest.approx(want, abs=0.01)
        for got, want in zip(ddp[block]["sd"], reference[block]["sd"]):
            assert got == pytest.approx(want, rel=0.2)
