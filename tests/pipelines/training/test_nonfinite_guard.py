"""A run whose loss turns NaN stops, is marked FAILED, and registers nothing."""

import pytest
import torch
from mlflow import MlflowClient

from models.blr import BayesianLinearRegression
from pipelines.config.loading import load_config
from pipelines.lifecycle.train import train
from pipelines.training.result import TrainingFailed


def test_nan_loss_marks_the_run_failed_and_registers_nothing(example_dir, tracking_uri, monkeypatch):
    original = BayesianLinearRegression.log_likelihood
    calls = {"n": 0}

    def poisoned(self, z, x, y):  # fault injection: the likelihood turns NaN after 30 evaluations
        calls["n"] += 1
        out = original(self, z, x, y)
        return out * torch.nan if calls["n"] > 30 else out

    monkeypatch.setattr(BayesianLinearRegression, "log_likelihood", poisoned)
    # On the CPU: on a CUDA device the step is a graph replay, which does not call the patched likelihood again.
    config = load_config(example_dir / "blr_csv.yaml", {"train.max_epochs": 20, "train.accelerator": "cpu"})
    with pytest.raises(TrainingFailed, match=r"non-finite elbo.* at step \d+") as info:
        train(config, tracking_uri=tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    run = client.get_run(info.value.run_id)
    assert run.info.status == "FAILED"
    assert "non-finite" in run.data.tags["viops.failure_reason"]
    assert run.data.metrics["nan_count"] > 0
    assert client.search_model_versions("name='blr-example'") == []
