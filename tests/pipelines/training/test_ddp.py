"""Lightning DDP from config: two CPU processes (gloo) train one run, each on its own shard of every epoch."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from mlflow import MlflowClient

from pipelines.training.loaders import IndexBatches
from tests.conftest import REPO, free_port, make_regression_csv, mlflow_db


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
    uri = mlflow_db(tmp_path / "mlflow.db")
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


@pytest.mark.slow
def test_two_nodes_on_loopback_train_one_run_to_the_closed_form_posterior(tmp_path):
    """Lightning DDP with ``num_nodes: 2``, one gloo process per "node", launched as a cluster launcher does: each
    its own ``viops train`` with MASTER_ADDR, MASTER_PORT and NODE_RANK. Node 1 joins node 0's MLflow run.

    q starts at the Laplace approximation (``guide.precondition: auto``), which is this posterior; 1,100 steps per
    node keep it there only if the two nodes' gradients add up to the full data's. Measured: largest mean error 0.004
    posterior SDs, SD ratios 0.96-1.01 (0.98-1.02 after 3,300 steps). With the likelihood scaled by half the rows, as
    a node's own shard would scale it, the same 1,100 steps (one process, batch 64) end at SD ratios 1.40-1.45."""
    import numpy as np

    from pipelines.config.loading import load_config
    from pipelines.training.data import prepare
    from tests.pipelines.training.test_posterior_accuracy import closed_form

    make_regression_csv(tmp_path / "data.csv", n=1000, seed=3)
    (tmp_path / "c.yaml").write_text(
        "name: two-nodes\ndata: {path: data.csv, target: y}\n"
        "model: {noise: {fixed: 0.3}, prior: {weights: {normal: {scale: 1.0}}, intercept: {normal: {scale: 1.0}}}}\n"
        "train: {lr: 0.01, early_stopping: {enabled: false}, batch_size: 32, max_epochs: 100, accelerator: cpu,"
        " devices: 1, num_nodes: 2, strategy: ddp, steps_per_batch: 1, progress_bar: false}\n"
    )
    uri = mlflow_db(tmp_path / "mlflow.db")
    port = free_port(consecutive=2)  # the process group's, and the run-id store's beside it
    nodes = []
    for rank in (0, 1):
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(REPO), "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), "NODE_RANK": str(rank), "VIOPS_WORK_DIR": str(tmp_path / f"node{rank}")}
        env.pop("VIOPS_DDP_RUN_ID", None)
        nodes.append(subprocess.Popen([sys.executable, "-m", "viops", "train", "--config", str(tmp_path / "c.yaml"),
                                       "--json", "--no-register"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outputs = [node.communicate(timeout=600) for node in nodes]
    for node, (_, err) in zip(nodes, outputs):
        assert node.returncode == 0, err[-3000:]
    (report,) = [json.loads(line) for line in outputs[0][0].splitlines() if line.startswith("{")]
    assert not [line for line in outputs[1][0].splitlines() if line.startswith("{")]  # node 1 reports nothing
    client = MlflowClient(uri)
    (run,) = client.search_runs([report["experiment_id"]])
    assert run.info.status == "FINISHED" and run.data.tags["viops.num_nodes"] == "2"
    assert run.data.tags["viops.world_size"] == "2"
    assert report["metrics"]["steps"] == math.ceil(700 / 2 / 32) * 100  # each node: its half of the 700 rows

    import mlflow

    mlflow.set_tracking_uri(uri)
    summary = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/posterior_summary.json")
    mean = np.r_[summary["weights"]["mean"], summary["intercept"]["mean"]]
    sd = np.r_[summary["weights"]["sd"], summary["intercept"]["sd"]]
    exact_mean, exact_sd = closed_form(prepare(load_config(tmp_path / "c.yaml").data))
    assert np.abs((mean - exact_mean) / exact_sd).max() < 0.1, (mean, exact_mean, exact_sd)
    assert np.all(np.abs(sd / exact_sd - 1) < 0.1), sd / exact_sd
