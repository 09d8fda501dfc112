import math

import pytest
import torch
from torch.distributions import HalfNormal, Independent, Normal, kl_divergence

from models.families import MeanFieldGaussian, make_family
from models.priors import Flat, HalfStudentT, make_prior


def test_half_student_t_is_a_normalised_density():
    prior = HalfStudentT(3.0, 2.0)
    grid = torch.linspace(0, 400, 400_001, dtype=torch.float64)
    density = prior.log_prob(grid).exp()
    assert torch.trapezoid(density, grid).item() == pytest.approx(1.0, abs=2e-3)
    assert (prior.rsample((1000,)) >= 0).all()


def test_flat_prior_contributes_nothing():
    assert torch.equal(Flat().log_prob(torch.tensor([-1e6, 0.0, 3.0])), torch.zeros(3))


def test_make_prior_names_what_is_allowed():
    assert isinstance(make_prior("half_normal", {"scale": 2.0}, positive=True), HalfNormal)
    with pytest.raises(ValueError, match="allowed: .*normal"):
        make_prior("laplace", {})
    with pytest.raises(ValueError, match="scale parameter"):
        make_prior("normal", {}, positive=True)


def test_mean_field_matches_torch_distributions():
    family = MeanFieldGaussian(3, init_scale=0.5, init_loc=torch.tensor([1.0, -2.0, 0.0]))
    ref = Independent(Normal(torch.tensor([1.0, -2.0, 0.0]), torch.full((3,), 0.5)), 1)
    z = family.rsample(7)
    assert z.shape == (7, 3)
    torch.testing.assert_close(family.log_prob(z), ref.log_prob(z))
    torch.testing.assert_close(family.entropy(), ref.entropy())
    prior = Independent(Normal(torch.zeros(3), torch.ones(3)), 1)
    torch.testing.assert_close(family.kl_to(prior), kl_divergence(ref, prior))


def test_antithetic_draws_are_mirrored_and_unbiased():
    torch.manual_seed(0)
    family = MeanFieldGaussian(2, init_scale=2.0, init_loc=torch.tensor([3.0, -1.0]))
    z = family.rsample(200_000, antithetic=True)
    half = z.shape[0] // 2
    torch.testing.assert_close(z[:half] + z[half:], 2 * family.loc.detach().expand(half, 2))
    torch.testing.assert_close(z.std(0), torch.full((2,), 2.0), rtol=0.01, atol=0)


def test_family_errors_name_the_problem():
    with pytest.raises(ValueError, match="allowed: mean_field"):
        make_family("full_rnk", 3)
    with pytest.raises(ValueError, match="init_scale must be positive"):
        MeanFieldGaussian(3, init_scale=-1.0)
    with pytest.raises(ValueError, match="at least one latent dimension"):
        MeanFieldGaussian(0)


def test_reparameterised_gradients_flow_to_both_parameters():
    family = MeanFieldGaussian(4)
    family.rsample(3).pow(2).sum().backward()
    assert family.loc.grad.abs().sum() > 0 and family.scale_unconstrained.grad.abs().sum() > 0
    assert math.isfinite(float(family.entropy()))
