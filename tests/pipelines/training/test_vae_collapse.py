"""Posterior collapse shows in the logged active-units metric, and KL annealing prevents it.

The setting in which VAEs collapse (Bowman et al. 2016; Chen et al. 2017): binary data and an autoregressive decoder
(MADE) that can model every pixel from the pixels before it, so z buys little likelihood and the KL term pushes
q(z | x) onto the prior from the first steps. With the KL weight warmed up from 0, the encoder settles on a code
before the penalty bites. Both runs go through `train()` from the zoo's VAE config and are read back from MLflow.
"""

import pytest
from mlflow import MlflowClient

from pipelines.config.loading import load_config, parse_overrides
from pipelines.lifecycle.train import train
from tests.conftest import REPO

LATENT_DIM = 8


@pytest.fixture(scope="module")
def binarized_digits(tmp_path_factory):
    from sklearn.datasets import load_digits

    frame = load_digits(as_frame=True).frame
    pixels = [c for c in frame.columns if c != "target"]
    frame[pixels] = (frame[pixels] >= 8).astype(int)
    path = tmp_path_factory.mktemp("data") / "binarized_digits.csv"
    frame.to_csv(path, index=False)
    return path


def _train_vae(data_path, tracking_uri, warmup_steps: int) -> dict[str, float]:
    overrides = [
        f"data={{path: {data_path}, target: target}}",
        f"model={{kind: vae, latent_dim: {LATENT_DIM}, encoder_hidden: [128], decoder_hidden: [256, 256], "
        "decoder: autoregressive, likelihood: bernoulli}",
        f"objective.kl_warmup_steps={warmup_steps}",
        "train.lr=0.003",
        "train.max_epochs=150",  # 10 steps per epoch: 1,500 steps
        "amortization={subsample: 16, refine_steps: 10, log_marginal_samples: 32}",
    ]
    config = load_config(REPO / "configs" / "zoo" / "vae_digits.yaml", parse_overrides(overrides))
    result = train(config, tracking_uri=tracking_uri, register=False)  # the run's metrics are what is read
    return MlflowClient(tracking_uri).get_run(result.run_id).data.metrics


def test_strong_decoder_collapses_without_annealing_and_not_with_it(binarized_digits, tracking_uri):
    plain = _train_vae(binarized_digits, tracking_uri, warmup_steps=0)
    annealed = _train_vae(binarized_digits, tracking_uri, warmup_steps=1000)
    # Seeds 0-2 give 3 of 8 active units without annealing and 8 of 8 with it.
    assert plain["final/active_units"] <= LATENT_DIM // 2
    assert plain["final/kl_min_dim"] < 0.01  # collapsed dimensions carry (almost) no information about x
    assert annealed["final/active_units"] >= LATENT_DIM - 1
    assert annealed["final/kl_min_dim"] > plain["final/kl_min_dim"]
    # Collapse is not a better fit: the annealed model's held-out bound is at least as good.
    assert annealed["final/validation_elbo_per_datum"] > plain["final/validation_elbo_per_datum"] - 0.5
