"""SVI with the example config's optimisation settings recovers the closed-form BLR posterior."""

import json

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from pipelines.config.loading import load_config
from pipelines.lifecycle.train import train
from pipelines.training.data import prepare
from tests.conftest import make_regression_csv

NOISE = 0.3


def closed_form(data, prior_sd=1.0):
    """Exact Gaussian posterior of [weights, intercept] for fixed noise and N(0, prior_sd^2) priors."""
    x = np.c_[data.train[list(data.features)].to_numpy(), np.ones(len(data.train))]
    y = data.train[data.target].to_numpy()
    cov = np.linalg.inv(x.T @ x / NOISE**2 + np.eye(x.shape[1]) / prior_sd**2)
    return cov @ x.T @ y / NOISE**2, np.sqrt(np.diag(cov))


def fitted(result, tracking_uri):
    path = mlflow.artifacts.download_artifacts(
        run_id=result.run_id, artifact_path="posterior_summary.json", tracking_uri=tracking_uri
    )
    summary = json.loads(open(path).read())
    assert set(summary) == {"weights", "intercept"}
    mean = np.r_[summary["weights"]["mean"], summary["intercept"]["mean"]]
    sd = np.r_[summary["weights"]["sd"], summary["intercept"]["sd"]]
    return mean, sd


def fit(config_path, tracking_uri, **overrides):
    config = load_config(config_path, overrides)
    data = prepare(config.data)
    result = train(config, prepared=data, tracking_uri=tracking_uri, register=False)
    return data, result


@pytest.mark.slow
def test_example_config_recovers_closed_form_posterior(example_dir, tracking_uri):
    # 4,000 rows (2,800 for training) and 4 latent dims; only max_epochs is raised (3,300 steps), as the issue allows.
    data, result = fit(example_dir / "blr_csv.yaml", tracking_uri,
                       **{"train.max_epochs": 300, "train.metrics_every_n_steps": 1})
    exact_mean, exact_sd = closed_form(data)
    mean, sd = fitted(result, tracking_uri)
    assert np.abs((mean - exact_mean) / exact_sd).max() < 0.1, (mean, exact_mean, exact_sd)
    # A run this long sends its step metrics through the writer process: every step must have arrived.
    history = MlflowClient(tracking_uri=tracking_uri).get_metric_history(result.run_id, "elbo")
    assert sorted(m.step for m in history) == list(range(int(result.metrics["steps"])))
    assert np.all(np.abs(sd / exact_sd - 1) < 0.10), sd / exact_sd
    # The data come from the model, so the posterior predictive is calibrated on the 600 test rows.
    assert abs(result.metrics["coverage_90"] - 0.9) < 0.05 and abs(result.metrics["coverage_50"] - 0.5) < 0.07
    assert result.metrics["pit_ks"] < 0.1


@pytest.mark.slow
def test_minibatch_and_full_batch_converge_to_the_same_posterior(tmp_path, tracking_uri):
    make_regression_csv(tmp_path / "data.csv", n=1000, seed=3)
    config = tmp_path / "c.yaml"
    config.write_text(
        "name: scaling\n"
        "data: {path: data.csv, target: y}\n"
        "model: {noise: {fixed: 0.3}, prior: {weights: {normal: {scale: 1.0}}, intercept: {normal: {scale: 1.0}}}}\n"
        "train: {lr: 0.01, early_stopping: {enabled: false}}\n"
    )
    data, small = fit(config, tracking_uri, **{"train.batch_size": 64, "train.max_epochs": 300})
    _, full = fit(config, tracking_uri, **{"train.batch_size": 700, "train.max_epochs": 3300})
    exact_mean, exact_sd = closed_form(data)
    (m64, s64), (mfull, sfull) = fitted(small, tracking_uri), fitted(full, tracking_uri)
    assert small.metrics["steps"] == 300 * 11 and full.metrics["steps"] == 3300
    assert np.abs((m64 - mfull) / exact_sd).max() < 0.1
    assert np.all(np.abs(s64 / sfull - 1) < 0.1)
    # ...and both are the right posterior: a wrong N/|B| factor would put the batch-64 SDs off by sqrt(700/64).
    assert np.all(np.abs(s64 / exact_sd - 1) < 0.1) and np.all(np.abs(sfull / exact_sd - 1) < 0.1)
