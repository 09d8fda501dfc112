import math

import pytest
import torch
from torch.distributions import Cauchy, HalfNormal, Independent, MultivariateNormal, Normal, StudentT

from models.blr import BayesianLinearRegression
from models.families import MeanFieldGaussian
from models.objectives import elbo, predictive_nll
from models.predictive import posterior_predictive


def _normal(loc=0.0, scale=1.0):
    return Normal(torch.tensor(loc), torch.tensor(scale))


def test_log_prior_with_learned_noise_includes_the_jacobian():
    model = BayesianLinearRegression(2, StudentT(3.0, 0.0, 1.0), Cauchy(0.0, 2.0), noise_prior=HalfNormal(1.5))
    z = torch.tensor([[0.3, -0.2, 1.0, math.log(0.7)]])
    expected = (
        StudentT(3.0, 0.0, 1.0).log_prob(z[0, :2]).sum()
        + Cauchy(0.0, 2.0).log_prob(z[0, 2])
        + HalfNormal(1.5).log_prob(torch.tensor(0.7))
        + math.log(0.7)  # d sigma / d log sigma
    )
    torch.testing.assert_close(model.log_prior(z)[0], expected)
    assert model.gaussian_prior() is None
    assert set(model.unpack(z)) == {"weights", "intercept", "noise_scale"}


def test_log_likelihood_matches_a_direct_computation():
    model = BayesianLinearRegression(3, _normal(), _normal(), noise_scale=0.5)
    z = torch.randn(5, 4)
    x, y = torch.randn(8, 3), torch.randn(8)
    direct = Normal(z[:, :3] @ x.T + z[:, 3:4], 0.5).log_prob(y)
    torch.testing.assert_close(model.log_likelihood(z, x, y), direct)


@pytest.mark.parametrize("learned", [False, True])
def test_the_closed_form_log_likelihood_is_torchs_normal_density(learned):
    """The training step's log-likelihood (closed form, no distribution objects) is the density of the model's
    torch.distributions predictive, with the noise fixed or learned (one scale per draw)."""
    noise = {"noise_prior": HalfNormal(1.0)} if learned else {"noise_scale": 0.7}
    for fit_intercept in (True, False):
        model = BayesianLinearRegression(3, _normal(), _normal(), fit_intercept=fit_intercept, **noise)
        z, x, y = torch.randn(4, model.latent_dim), torch.randn(9, 3), torch.randn(9)
        torch.testing.assert_close(model.log_likelihood(z, x, y), model.predictive(z, x).log_prob(y))


@pytest.mark.parametrize("kind", ["mean_field", "full_rank", "low_rank"])
@pytest.mark.parametrize("prior_loc, prior_scale", [
    (torch.full((5,), 0.2), torch.full((5,), 1.7)),  # the same for every coordinate: read as numbers
    (torch.zeros(5), torch.ones(5)),  # N(0, 1): the centring and the divisions by one are skipped
    (torch.linspace(-1, 1, 5), torch.tensor([1.0, 1.0, 10.0, 0.5, 1.0])),  # per coordinate: tensors
])
def test_gaussian_draws_and_kl_in_one_pass_are_rsample_and_torchs_kl(kind, prior_loc, prior_scale):
    """The closed-form KL to a diagonal Gaussian prior is torch's ``kl_divergence`` (for the full-rank and low-rank
    families, with the prior as a MultivariateNormal), value and gradient; the draws are rsample's."""
    from models.families import make_family

    family = make_family(kind, 5, init_scale=0.3)
    dense = torch.tril(torch.randn(5, 5)) + 2 * torch.eye(5) if kind == "full_rank" else None
    family.precondition(torch.randn(5), torch.rand(5) + 0.5, dense)
    with torch.no_grad():
        for parameter in family.parameters():
            parameter.normal_(0.0, 0.5)
    prior = Independent(Normal(prior_loc, prior_scale), 1)
    # torch's KL pairs a MultivariateNormal with a MultivariateNormal only
    as_torch = prior if kind == "mean_field" else MultivariateNormal(prior_loc, scale_tril=torch.diag(prior_scale))
    for _ in range(2):  # the second time with the prior's terms read before
        torch.manual_seed(3)
        z, kl = family.rsample_and_kl(4, prior, antithetic=True)
        torch.manual_seed(3)
        torch.testing.assert_close(z, family.rsample(4, antithetic=True))
        expected = torch.distributions.kl_divergence(family.distribution(), as_torch)
        torch.testing.assert_close(kl, expected)
        torch.testing.assert_close(family.kl_to(prior), expected)
        grads = torch.autograd.grad(kl, list(family.parameters()), allow_unused=True)
        wanted = torch.autograd.grad(expected, list(family.parameters()), allow_unused=True)
        for got, want in zip(grads, wanted):
            torch.testing.assert_close(got, want)


@pytest.mark.parametrize("kind", ["mean_field", "full_rank", "low_rank"])
def test_a_prior_with_a_gradient_keeps_it_through_the_closed_form_kl(kind):
    from models.families import make_family

    family = make_family(kind, 3, init_scale=0.5)
    prior_scale = torch.full((3,), 2.0, requires_grad=True)  # e.g. a learned hyperprior's scale
    prior = Independent(Normal(torch.zeros(3), prior_scale), 1)
    _, kl = family.rsample_and_kl(2, prior)
    (grad,) = torch.autograd.grad(kl, [prior_scale])
    if kind != "mean_field":  # torch's KL pairs these with a MultivariateNormal only
        prior = MultivariateNormal(torch.zeros(3), scale_tril=torch.diag(prior_scale))
    (want,) = torch.autograd.grad(torch.distributions.kl_divergence(family.distribution(), prior), [prior_scale])
    torch.testing.assert_close(grad, want)


@pytest.mark.parametrize(("kind", "dim"), [("mean_field", 4), ("full_rank", 4), ("low_rank", 4), ("flow", 4),
                                         ("flow", 1)])
def test_draws_with_their_density_are_rsample_and_log_prob_with_the_same_gradient(kind, dim):
    """The Monte-Carlo KL's log q read from the noise (the Gaussians) or from the flow's inversion passes is log_prob
    at the draws, value and gradient. A flow of one coordinate has one layer pass; of four, two (coupling). In double
    precision, so that two ways through a flow's splines agree to more than float32's rounding."""
    from models.families import make_family

    family = make_family(kind, dim, init_scale=0.4).double()
    family.precondition(torch.randn(dim), torch.rand(dim) + 0.5)
    with torch.no_grad():
        for parameter in family.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    torch.manual_seed(5)
    z, log_q = family.rsample_with_log_prob(6, antithetic=family.symmetric)
    torch.manual_seed(5)
    expected_z = family.rsample(6, antithetic=family.symmetric)
    expected = family.log_prob(expected_z)
    torch.testing.assert_close(z, expected_z)
    torch.testing.assert_close(log_q, expected)
    parameters = list(family.parameters())
    weights = torch.arange(6.0, dtype=torch.float64)
    fast = torch.autograd.grad((log_q * weights).sum(), parameters, allow_unused=True)
    slow = torch.autograd.grad((expected * weights).sum(), parameters, allow_unused=True)
    for parameter, a, b in zip(parameters, fast, slow):  # None: no path (log q of its own draws ignores loc)
        zero = torch.zeros_like(parameter)
        torch.testing.assert_close(zero if a is None else a, zero if b is None else b)


@pytest.mark.parametrize("kind", ["mean_field", "full_rank", "low_rank", "flow"])
def test_draws_with_their_density_follow_a_generator_as_rsample_does(kind):
    """Evaluation draws from its own seeded generator: the same draws as rsample's, the global RNG untouched."""
    from models.families import make_family

    family = make_family(kind, 3)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    z, log_q = family.rsample_with_log_prob(8, antithetic=family.symmetric,
                                            generator=torch.Generator().manual_seed(11))
    assert torch.equal(torch.get_rng_state(), before)
    expected = family.rsample(8, antithetic=family.symmetric, generator=torch.Generator().manual_seed(11))
    torch.testing.assert_close(z, expected)
    torch.testing.assert_close(log_q, family.log_prob(expected).detach(), atol=1e-5, rtol=1e-5)


def test_held_out_fit_with_a_monte_carlo_kl_is_log_q_minus_log_prior_at_its_draws():
    from models.families import FullRankGaussian
    from models.objectives import held_out_fit

    torch.manual_seed(3)
    model = BayesianLinearRegression(2, _normal(), _normal(), noise_prior=HalfNormal(1.0))
    assert model.gaussian_prior() is None  # a learned noise scale: no closed-form KL
    family = FullRankGaussian(model.latent_dim, init_scale=0.3)
    x, y = torch.randn(50, 2), torch.randn(50)
    fit = held_out_fit(model, family, x, y, train_size=500, num_samples=16,
                       generator=torch.Generator().manual_seed(4))
    z = family.rsample(16, generator=torch.Generator().manual_seed(4))
    kl = (family.log_prob(z) - model.log_prior(z)).mean()
    want = model.log_likelihood(z, x, y).mean() - kl / 500
    torch.testing.assert_close(fit.elbo_per_datum, want.detach(), atol=1e-5, rtol=1e-5)


def test_a_flow_under_a_gaussian_prior_estimates_the_kl_from_its_draws_in_the_elbo_and_the_held_out_fit():
    """No closed form: both take log q while drawing, and give log q - log prior at rsample's draws."""
    from models.families import make_family
    from models.objectives import held_out_fit

    model = BayesianLinearRegression(2, _normal(), _normal(), noise_scale=0.5)
    assert model.gaussian_prior() is not None
    family = make_family("flow", model.latent_dim, init_scale=0.3)
    x, y = torch.randn(40, 2), torch.randn(40)
    torch.manual_seed(6)
    terms = elbo(model, family, x, y, dataset_size=400, num_particles=4)
    fit = held_out_fit(model, family, x, y, train_size=400, num_samples=16, generator=torch.Generator().manual_seed(4))
    torch.manual_seed(6)
    z = family.rsample(4)
    assert not terms.analytic_kl
    torch.testing.assert_close(terms.kl, (family.log_prob(z) - model.log_prior(z)).mean(), atol=1e-5, rtol=1e-5)
    z = family.rsample(16, generator=torch.Generator().manual_seed(4))
    want = model.log_likelihood(z, x, y).mean() - (family.log_prob(z) - model.log_prior(z)).mean() / 400
    torch.testing.assert_close(fit.elbo_per_datum, want.detach(), atol=1e-5, rtol=1e-5)


def test_analytic_kl_agrees_with_monte_carlo():
    torch.manual_seed(0)
    model = BayesianLinearRegression(3, _normal(0.0, 2.0), _normal(1.0, 3.0), noise_scale=1.0)
    family = MeanFieldGaussian(4, init_scale=0.4, init_loc=torch.tensor([0.5, -0.5, 1.0, 2.0]))
    analytic = family.kl_to(model.gaussian_prior())
    z = family.rsample(400_000)
    mc = (family.log_prob(z) - model.log_prior(z)).mean()
    assert float(analytic) == pytest.approx(float(mc), abs=0.01)


def test_minibatch_scaling_is_unbiased_for_the_full_data_likelihood():
    """Averaging N/B-scaled minibatch log-likelihoods over a partition gives the full-data log-likelihood."""
    torch.manual_seed(0)
    model = BayesianLinearRegression(2, _normal(), _normal(), noise_scale=0.3)
    family = MeanFieldGaussian(3, init_scale=1e-9)  # effectively a point mass, so only the scaling is tested
    x, y = torch.randn(120, 2), torch.randn(120)
    full = elbo(model, family, x, y, dataset_size=120).expected_log_likelihood
    parts = [elbo(model, family, x[i : i + 30], y[i : i + 30], dataset_size=120).expected_log_likelihood
             for i in range(0, 120, 30)]
    torch.testing.assert_close(torch.stack(parts).mean(), full, rtol=1e-5, atol=1e-3)


def test_particles_are_vectorised_and_reduce_variance():
    torch.manual_seed(0)
    model = BayesianLinearRegression(2, _normal(), _normal(), noise_prior=HalfNormal(1.0))
    family = MeanFieldGaussian(4, init_scale=0.5)
    x, y = torch.randn(64, 2), torch.randn(64)
    one = torch.stack([elbo(model, family, x, y, dataset_size=64, num_particles=1).elbo for _ in range(300)])
    many = torch.stack([elbo(model, family, x, y, dataset_size=64, num_particles=16).elbo for _ in range(300)])
    assert many.std() < one.std() / 2.5
    terms = elbo(model, family, x, y, dataset_size=64, num_particles=16)
    assert not terms.analytic_kl  # a learned noise scale has a non-Gaussian prior


def test_predictive_summary_and_nll():
    torch.manual_seed(0)
    model = BayesianLinearRegression(1, _normal(), _normal(), noise_scale=0.5)
    family = MeanFieldGaussian(2, init_scale=1e-6, init_loc=torch.tensor([2.0, 1.0]))
    x = torch.tensor([[0.0], [1.0]])
    summary = posterior_predictive(model, family, x, num_samples=20_000, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(summary.mean, torch.tensor([1.0, 3.0]), atol=0.02, rtol=0)
    torch.testing.assert_close(summary.sd, torch.tensor([0.5, 0.5]), atol=0.01, rtol=0)
    torch.testing.assert_close(summary.quantiles[0.95] - summary.mean, torch.full((2,), 0.5 * 1.6449), atol=0.03,
                               rtol=0)
    nll = predictive_nll(model, family, x, torch.tensor([1.0, 3.0]), num_samples=10)
    assert float(nll) == pytest.approx(-float(Normal(0.0, 0.5).log_prob(torch.tensor(0.0))), abs=1e-3)


def test_predictive_quantiles_are_those_of_the_exact_gaussian_predictive():
    """A Gaussian q of a fixed-noise linear model has an exactly Gaussian predictive, N(x m + b, x S x' + s^2): its
    quantiles are the mixture's over the draws of z, with no sampled-y noise on top (0.5 SDs of error fewer)."""
    from models.predictive import mixture_quantiles

    model = BayesianLinearRegression(1, _normal(), _normal(), noise_scale=0.3)
    family = MeanFieldGaussian(2, init_scale=0.2, init_loc=torch.tensor([2.0, 1.0]))
    scale = family.transform_noise(torch.eye(2)).detach() - family.transform_noise(torch.zeros(1, 2)).detach()
    x = torch.tensor([[0.0], [1.0], [-2.0]])
    w_sd, b_sd = float(scale[0, 0]), float(scale[1, 1])
    sd = torch.sqrt(x[:, 0] ** 2 * w_sd**2 + b_sd**2 + 0.3**2)
    mean = 2.0 * x[:, 0] + 1.0
    summary = posterior_predictive(model, family, x, num_samples=4000, generator=torch.Generator().manual_seed(0))
    for level in (0.05, 0.95):
        exact = mean + float(Normal(0.0, 1.0).icdf(torch.tensor(level))) * sd
        torch.testing.assert_close(summary.quantiles[level], exact, atol=float(0.04 * sd.max()), rtol=0)
    # The solver itself: the mixture's CDF at the returned point is the level, on every row.
    loc, spread = torch.randn(300, 50) * 0.5, torch.rand(300, 50) + 0.1
    q = mixture_quantiles(loc, spread, 0.05)
    torch.testing.assert_close(Normal(loc, spread).cdf(q).mean(0), torch.full((50,), 0.05), atol=2e-5, rtol=0)


def test_constructor_rejects_ambiguous_noise():
    with pytest.raises(ValueError, match="exactly one of noise_scale"):
        BayesianLinearRegression(2, _normal(), _normal())
    with pytest.raises(ValueError, match="must be positive"):
        BayesianLinearRegression(2, _normal(), _normal(), noise_scale=-1.0)
    assert isinstance(BayesianLinearRegression(2, _normal(), _normal(), noise_scale=1.0).gaussian_prior(), Independent)


def test_held_out_fit_matches_the_separate_estimators():
    from models.objectives import held_out_fit

    torch.manual_seed(0)
    model = BayesianLinearRegression(2, _normal(), _normal(), noise_scale=0.5)
    family = MeanFieldGaussian(3, init_scale=0.05, init_loc=torch.tensor([1.0, -1.0, 0.5]))
    x = torch.randn(500, 2)
    y = x @ torch.tensor([1.0, -1.0]) + 0.5 + 0.5 * torch.randn(500)
    fit = held_out_fit(model, family, x, y, train_size=1000, num_samples=4000)
    terms = elbo(model, family, x, y, dataset_size=500, num_particles=4000)
    expected_elbo = terms.expected_log_likelihood / 500 - terms.kl / 1000
    assert float(fit.elbo_per_datum) == pytest.approx(float(expected_elbo), abs=2e-3)
    assert float(fit.predictive_nll) == pytest.approx(float(predictive_nll(model, family, x, y, 4000)), abs=2e-3)



def test_held_out_fit_in_row_chunks_is_the_fit_in_one_evaluation(monkeypatch):
    import models.objectives as objectives

    model = BayesianLinearRegression(2, _normal(), _normal(), noise_prior=HalfNormal(torch.tensor(1.0)))
    family = MeanFieldGaussian(4, init_scale=0.3, init_loc=torch.tensor([1.0, -1.0, 0.5, -0.7]))
    x = torch.randn(3000, 2, generator=torch.Generator().manual_seed(1))
    y = x @ torch.tensor([1.0, -1.0]) + 0.5 + 0.5 * torch.randn(3000, generator=torch.Generator().manual_seed(2))

    def fit():
        return objectives.held_out_fit(model, family, x, y, train_size=9000, num_samples=4000,
                                       generator=torch.Generator().manual_seed(3))

    chunked = fit()  # 4,000 draws: 524 rows at a time, six evaluations
    monkeypatch.setattr(objectives, "CHUNK_ELEMENTS", 4000 * 3000)
    whole = fit()
    assert float(chunked.elbo_per_datum) == pytest.approx(float(whole.elbo_per_datum), rel=1e-5)
    assert float(chunked.predictive_nll) == pytest.approx(float(whole.predictive_nll), rel=1e-5)
