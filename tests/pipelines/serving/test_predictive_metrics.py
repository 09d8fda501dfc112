"""``predictive_metrics`` on a registered version gives the training run's held-out numbers, in the data's units."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from mlflow import MlflowClient

from pipelines.config.loading import load_config, parse_overrides
from pipelines.lifecycle.train import train
from pipelines.serving.loading import load_version
from pipelines.serving.predictive_metrics import predictive_metrics
from tests.conftest import REPO


def test_standardised_model_reports_nll_and_elbo_in_the_targets_units(tracking_uri):
    # The demo config standardises features and target; the training run logs its held-out NLL and ELBO on that
    # standardised scale, and the pyfunc bundle knows the scale.
    config = load_config(REPO / "configs" / "demo" / "blr_diabetes.yaml", parse_overrides(["train.max_epochs=150"]))
    result = train(config, tracking_uri=tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    loaded = load_version(client, config.model_name, str(result.model_version), tracking_uri=tracking_uri)
    import mlflow

    holdout = pd.read_parquet(mlflow.artifacts.download_artifacts(
        run_id=result.run_id, artifact_path="evaluation/holdout.parquet", tracking_uri=tracking_uri))
    metrics = predictive_metrics(loaded.predictor, holdout, num_samples=256)
    log_scale = math.log(loaded.bundle.target_scale)
    assert loaded.bundle.train_rows == 310 and log_scale > 4  # diabetes progression: SD ~ 77
    assert metrics["nll"] == pytest.approx(result.metrics["test_predictive_nll"] + log_scale, abs=0.02)
    assert metrics["elbo_per_datum"] == pytest.approx(result.metrics["test_elbo_per_datum"] - log_scale, abs=0.05)
    assert metrics["coverage_90"] == pytest.approx(result.metrics["coverage_90"], abs=0.03)
