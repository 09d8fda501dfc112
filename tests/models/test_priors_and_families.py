import math

import pytest
import torch
from torch.distributions import HalfNormal, Independent, MultivariateNormal, Normal, kl_divergence
from torch.nn import functional as F

from models.families import FAMILIES, FullRankGaussian, LowRankGaussian, MeanFieldGaussian, make_family
from models.priors import Flat, HalfStudentT, PriorDensity, make_prior


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


@pytest.mark.parametrize("kind, params", [("normal", {}), ("normal", {"loc": 0.7, "scale": 2.5}),
                                           ("student_t", {"df": 4.0, "scale": 0.5}), ("cauchy", {}), ("flat", {})])
def test_a_prior_density_on_the_weights_is_torch_s_summed_log_prob(kind, params):
    prior = make_prior(kind, params)
    z = torch.randn(3, 7, dtype=torch.float64) * 3  # torch keeps the prior's constants in float32: float32 agreement
    assert torch.allclose(PriorDensity(prior).weights(z), prior.log_prob(z).sum(-1), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind, params", [("half_normal", {}), ("half_normal", {"scale": 0.3}),
                                           ("half_cauchy", {"scale": 2.0}), ("half_student_t", {"df": 3.0})])
def test_a_prior_density_on_a_log_scale_adds_the_jacobian_of_exp(kind, params):
    """``log_scale(u)`` is the density of ``u = log sigma``: torch's log p(sigma) through the positive bijection."""
    from torch.distributions import biject_to, constraints

    prior, u = make_prior(kind, params, positive=True), torch.linspace(-4, 3, 15, dtype=torch.float64)
    to_positive = biject_to(constraints.positive)
    sigma = to_positive(u)
    expected = prior.log_prob(sigma) + to_positive.log_abs_det_jacobian(u, sigma)
    assert torch.allclose(PriorDensity(prior).log_scale(u), expected, rtol=1e-6, atol=1e-6)


def test_a_positive_parameter_is_held_as_its_log():
    """The hot-path densities take ``u`` itself as ``log sigma`` and as the log-Jacobian: true while the models' map,
    torch's bijection onto the positive reals, is ``exp``."""
    from models.priors import TO_POSITIVE

    u = torch.linspace(-4, 3, 15, dtype=torch.float64)
    sigma = TO_POSITIVE(u)
    torch.testing.assert_close(sigma.log(), u)
    torch.testing.assert_close(TO_POSITIVE.log_abs_det_jacobian(u, sigma), u)


def test_a_mean_field_family_loaded_from_a_preconditioned_one_keeps_its_map(tmp_path):
    """Without preconditioning the family reads its parameters directly; a state dict (a checkpoint, a registered
    model) that carries a preconditioning map must bring the map into use, and a pickled family keep it."""
    source = MeanFieldGaussian(3).precondition(torch.tensor([1.0, -2.0, 0.5]), torch.tensor([2.0, 0.1, 1.0]))
    assert source.mean.tolist() == [1.0, -2.0, 0.5]
    fresh = MeanFieldGaussian(3)
    assert fresh.mean is fresh.loc  # the identity map: no arithmetic
    fresh.load_state_dict(source.state_dict())
    assert torch.equal(fresh.mean, source.mean) and torch.equal(fresh.stddev, source.stddev)
    noise = torch.randn(4, 3)
    assert torch.equal(fresh.transform_noise(noise), source.transform_noise(noise))
    torch.save(source, tmp_path / "family.pt")
    loaded = torch.load(tmp_path / "family.pt", weights_only=False)
    assert torch.equal(loaded.transform_noise(noise), source.transform_noise(noise))
    loaded.load_state_dict(MeanFieldGaussian(3).state_dict())  # back to the identity
    assert loaded.mean is loaded.loc


def test_a_full_rank_family_scales_rows_under_a_diagonal_map_and_multiplies_under_a_dense_one(tmp_path):
    """Without a dense map (no preconditioning, or marginal SDs only) the family scales the rows of its Cholesky
    factor instead of multiplying by the map; the two give the same q. A state dict that carries a dense map (a
    checkpoint, a registered model) brings the product back into use, and one without it takes it away."""
    shift, scale = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([2.0, 0.1, 1.0])
    dense = torch.tensor([[1.0, 0.0, 0.0], [0.5, 2.0, 0.0], [-1.0, 0.3, 0.7]])
    diagonal = FullRankGaussian(3).precondition(shift, scale)
    with torch.no_grad():
        for parameter in diagonal.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    assert diagonal._diagonal_map
    tril = torch.diag_embed(torch.nn.functional.softplus(diagonal.scale_diag_unconstrained)).index_put(
        (diagonal._rows, diagonal._cols), diagonal.scale_offdiag)
    torch.testing.assert_close(diagonal.scale_tril, torch.diag(scale) @ tril)
    torch.testing.assert_close(diagonal._loc(), shift + scale * diagonal.loc)
    fresh = FullRankGaussian(3).precondition(shift, scale, dense)
    assert not fresh._diagonal_map
    fresh.load_state_dict(diagonal.state_dict())  # the diagonal map, and the product left out again
    assert fresh._diagonal_map and torch.equal(fresh.scale_tril, diagonal.scale_tril)
    fresh.load_state_dict(FullRankGaussian(3).precondition(shift, scale, dense).state_dict())
    assert not fresh._diagonal_map
    torch.testing.assert_close(fresh.scale_tril, dense @ torch.diag(F.softplus(fresh.scale_diag_unconstrained)))
    torch.save(fresh, tmp_path / "family.pt")
    loaded = torch.load(tmp_path / "family.pt", weights_only=False)
    noise = torch.randn(4, 3)
    assert not loaded._diagonal_map and torch.equal(loaded.transform_noise(noise), fresh.transform_noise(noise))


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
    with pytest.raises(ValueError, match="allowed: flow, full_rank, low_rank, mean_field"):
        make_family("full_rnk", 3)
    with pytest.raises(ValueError, match="rank must be between 1 and the latent dimension 3"):
        make_family("low_rank", 3, rank=4)
    with pytest.raises(ValueError, match="init_scale must be positive"):
        MeanFieldGaussian(3, init_scale=-1.0)
    with pytest.raises(ValueError, match="at least one latent dimension"):
        MeanFieldGaussian(0)


def test_reparameterised_gradients_flow_to_both_parameters():
    family = MeanFieldGaussian(4)
    family.rsample(3).pow(2).sum().backward()
    assert family.loc.grad.abs().sum() > 0 and family.scale_unconstrained.grad.abs().sum() > 0
    assert math.isfinite(float(family.entropy()))


def _correlated_target() -> MultivariateNormal:
    cov = torch.tensor([[1.0, 0.9, 0.0], [0.9, 1.0, 0.3], [0.0, 0.3, 0.5]])
    return MultivariateNormal(torch.tensor([1.0, -2.0, 0.5]), covariance_matrix=cov)


def _fit(family, target, steps: int = 3000, particles: int = 16):
    """Minimise KL(q || target) by reparameterised SVI (the ELBO of a model whose posterior is ``target``), with log q
    taken while drawing, as the ELBO takes it for a Monte-Carlo KL."""
    torch.manual_seed(0)
    opt = torch.optim.Adam(family.parameters(), lr=0.02, betas=(0.9, 0.9))  # as viops trains (docs/training.md)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=1e-4)
    for _ in range(steps):
        z, log_q = family.rsample_with_log_prob(particles, antithetic=family.symmetric)
        loss = (log_q - target.log_prob(z)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return family


def test_full_rank_recovers_a_correlated_gaussian_and_mean_field_underestimates_it():
    target = _correlated_target()
    full = _fit(FullRankGaussian(3), target)
    q = full.distribution()
    torch.testing.assert_close(q.mean, target.mean, atol=0.05, rtol=0)
    torch.testing.assert_close(q.covariance_matrix, target.covariance_matrix, atol=0.05, rtol=0)
    mean_field = _fit(MeanFieldGaussian(3), target)
    # The KL(q || p) optimum of a factorised Gaussian has variances 1 / diag(precision): too small when correlated.
    expected_sd = target.precision_matrix.diagonal().rsqrt()
    torch.testing.assert_close(mean_field.stddev.detach(), expected_sd, atol=0.03, rtol=0)
    assert (mean_field.stddev < target.stddev - 0.2)[:2].all()


def test_low_rank_captures_the_dominant_correlation():
    target = _correlated_target()
    low = _fit(LowRankGaussian(3, rank=1), target)
    torch.testing.assert_close(low.mean.detach(), target.mean, atol=0.05, rtol=0)
    cov = low.distribution().covariance_matrix.detach()
    assert cov[0, 1] / (cov[0, 0] * cov[1, 1]).sqrt() > 0.8  # the 0.9 correlation is found
    mean_field = _fit(MeanFieldGaussian(3), target)
    with torch.no_grad():
        def kl(family):
            return float(kl_divergence(family.distribution(), target)) if family is low else float(
                kl_divergence(MultivariateNormal(family.loc, scale_tril=torch.diag(family.stddev)), target))
        assert kl(low) < kl(mean_field) - 0.2


def test_flow_fits_a_skewed_target_better_than_a_gaussian():
    # A banana-free but skewed target: z1 ~ N(0, 1), z2 | z1 ~ N(0.5 * z1^2, 0.5).
    class Skewed:
        def log_prob(self, z):
            return Normal(0.0, 1.0).log_prob(z[..., 0]) + Normal(0.5 * z[..., 0] ** 2, 0.5).log_prob(z[..., 1])

    target = Skewed()
    torch.manual_seed(1)
    # 800 steps: KL 0.027 (flow) against 0.315 (Gaussian), E[z2] 0.44; 1,500 steps moved them to 0.017 and 0.455.
    flow = _fit(make_family("flow", 2, hidden_features=[16, 16]), target, steps=800, particles=32)
    gauss = _fit(FullRankGaussian(2), target, steps=800, particles=32)
    with torch.no_grad():
        def kl(family):
            z = family.rsample(20_000)
            return float((family.log_prob(z) - target.log_prob(z)).mean())
        assert kl(flow) < kl(gauss) - 0.1
        assert flow.mean[1].item() == pytest.approx(0.5, abs=0.1)  # E[z2] = 0.5 * E[z1^2]


@pytest.mark.parametrize("dim", [1, 3])
def test_a_flow_inverted_layer_by_layer_gives_what_zuko_gives(dim):
    """The flow's draws with their log-determinant from the last inversion pass of each layer (two passes a coupling
    layer, not three) are zuko's inverse and its log-determinant; a chain with another kind of layer is zuko's own."""
    from zuko.transforms import ComposedTransform, MonotonicAffineTransform

    from models.families.flow import _invert_with_log_det

    family = _trained_like("flow", dim).double()
    transform = family.flow().transform
    mixed = ComposedTransform(*transform.transforms,
                              MonotonicAffineTransform(torch.randn(dim).double(), torch.randn(dim).double()))
    u = torch.randn(7, dim, dtype=torch.float64)
    for chain in (transform, mixed):
        x, inverse_log_det = chain.inv.call_and_ladj(u)
        got_x, log_det = _invert_with_log_det(chain, u)
        torch.testing.assert_close(got_x, x)
        torch.testing.assert_close(log_det, -inverse_log_det)
        assert log_det.shape == (7,)


def test_a_flow_draws_with_its_density_in_two_passes_of_each_conditioner_not_three():
    """Counted, not timed: each conditioner network is three linear layers (two hidden), so the three coupling layers'
    draws with their density take 3 x 2 x 3 matrix products here and 3 x 3 x 3 through zuko's
    ``rsample_and_log_prob`` (which evaluates each conditioner once more for the log-determinant)."""
    from benchmarks.step_costs import count_ops

    family = _trained_like("flow", 3)
    with torch.no_grad():
        ours = count_ops(lambda: family.rsample_with_log_prob(4))
        zukos = count_ops(lambda: family.flow().rsample_and_log_prob((4,)))
    assert ours["aten.addmm.default"] == 18 and zukos["aten.addmm.default"] == 27


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_family_samples_scores_and_reproduces_draws_from_noise(name):
    family = make_family(name, 4, **({"rank": 2} if name == "low_rank" else {}))
    z = family.rsample(5)
    assert z.shape == (5, 4) and family.log_prob(z).shape == (5,)
    noise = torch.randn(20_000, family.noise_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        draws = family.transform_noise(noise)
    torch.testing.assert_close(draws.mean(0), family.mean.detach(), atol=0.01, rtol=0)
    torch.testing.assert_close(draws.std(0), family.stddev.detach(), atol=0.01, rtol=0.05)


@pytest.mark.parametrize("name", ["full_rank", "low_rank"])
def test_analytic_kl_to_a_diagonal_prior_matches_monte_carlo(name):
    torch.manual_seed(0)
    family = make_family(name, 3, init_scale=0.7, **({"rank": 2} if name == "low_rank" else {}))
    with torch.no_grad():
        for p in family.parameters():
            p.add_(0.3 * torch.randn_like(p))
        prior = Independent(Normal(torch.tensor([0.0, 1.0, -1.0]), torch.tensor([1.0, 2.0, 0.5])), 1)
        z = family.rsample(400_000)
        mc = (family.log_prob(z) - prior.log_prob(z)).mean()
        torch.testing.assert_close(family.kl_to(prior), mc, atol=0.01, rtol=0.01)


def _trained_like(name: str, dim: int = 3):
    """A family moved away from its initialisation, so that every parameter (scales, correlations, the flow's
    splines) takes part in both the sampling path and the density."""
    family = make_family(name, dim, **({"rank": 2} if name == "low_rank" else {}))
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for parameter in family.parameters():
            parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))
    return family


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_sampling_path_and_density_define_the_same_q(name):
    """rsample goes through transform_noise; log_prob through distribution(): the draws of one must be what the other
    describes. Gaussians: sample moments against the closed form. Every family: the mean log-density of its own
    draws equals that of draws taken by torch from distribution(), and matches its entropy where one exists."""
    family = _trained_like(name)
    with torch.no_grad():
        z = family.rsample(100_000, generator=torch.Generator().manual_seed(1))
        dist = family.distribution()
        if name != "flow":
            torch.testing.assert_close(z.mean(0), dist.mean, atol=0.02, rtol=0)
            covariance = getattr(dist, "covariance_matrix", None)
            if covariance is None:  # the mean-field family: an Independent Normal
                covariance = torch.diag(dist.variance)
            torch.testing.assert_close(torch.cov(z.T), covariance, atol=0.03, rtol=0.03)
            assert float(-family.log_prob(z).mean()) == pytest.approx(float(family.entropy()), abs=0.02)
        torch.manual_seed(2)
        reference = dist.sample((100_000,))
        assert float(family.log_prob(z).mean()) == pytest.approx(float(family.log_prob(reference).mean()), abs=0.03)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_a_generator_makes_draws_repeatable_and_leaves_the_global_rng_alone(name):
    family = make_family(name, 4)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    first = family.rsample(8, generator=torch.Generator().manual_seed(9))
    second = family.rsample(8, generator=torch.Generator().manual_seed(9))
    assert torch.equal(torch.random.get_rng_state(), before)
    torch.testing.assert_close(first, second)
    assert not torch.allclose(first, family.rsample(8, generator=torch.Generator().manual_seed(10)))
