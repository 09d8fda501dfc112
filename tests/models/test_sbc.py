"""Simulation-based calibration tells a VI that matches the posterior from one that does not."""

import numpy as np
import pytest
import torch
from torch.distributions import HalfNormal, Normal

from models.blr import BayesianLinearRegression
from models.families import make_family
from models.sbc import simulation_based_calibration


def _design(rho: float, n: int = 40, p: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    cov = torch.full((p, p), rho) + (1 - rho) * torch.eye(p)
    return torch.randn(n, p, generator=g) @ torch.linalg.cholesky(cov).T


def _sbc(family: str, x: torch.Tensor):
    model = BayesianLinearRegression(x.shape[1], Normal(0.0, 1.0), Normal(0.0, 1.0), noise_scale=1.0)
    return simulation_based_calibration(model, lambda: make_family(family, model.latent_dim), x, fits=48, draws=19,
                                        steps=300, lr=0.05, bins=4, seed=0)


def test_sbc_passes_a_full_rank_guide_and_fails_mean_field_on_a_correlated_design():
    x = _design(0.95)
    good, bad = _sbc("full_rank", x), _sbc("mean_field", x)
    assert good.passed, good.p_values
    # Mean-field is too narrow along the correlated weights: their ranks pile up at both ends.
    assert not bad.passed and bad.p_values[:3].min() < 1e-3, bad.p_values
    hist = bad.histogram()[0]
    assert hist[0] + hist[-1] > hist[1] + hist[2]  # the U of a too-narrow q
    assert good.ranks.shape == (48, 4) and good.ranks.min() >= 0 and good.ranks.max() <= 19
    assert np.isclose(good.histogram().sum(axis=1), 48).all()


def test_sbc_refuses_a_model_without_a_gaussian_prior():
    model = BayesianLinearRegression(2, Normal(0.0, 1.0), Normal(0.0, 1.0), noise_prior=HalfNormal(1.0))
    with pytest.raises(ValueError, match="prior over z is one Gaussian"):
        simulation_based_calibration(model, lambda: make_family("mean_field", model.latent_dim), torch.zeros(5, 2))


def test_sbc_is_reproducible_for_a_seed_whatever_ran_before():
    x = _design(0.95)
    model = BayesianLinearRegression(x.shape[1], Normal(0.0, 1.0), Normal(0.0, 1.0), noise_scale=1.0)

    def run():
        return simulation_based_calibration(model, lambda: make_family("mean_field", model.latent_dim), x, fits=8,
                                            draws=3, steps=20, bins=4, seed=3)

    first = run()
    torch.rand(7)  # other work in the process draws from the global generator
    assert (run().ranks == first.ranks).all()
