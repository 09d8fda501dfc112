"""Laplace approximation, preconditioned families, and the PSIS k-hat diagnostic against closed forms."""

import pytest
import torch
from torch.distributions import HalfNormal, Normal

from models.blr import BayesianLinearRegression
from models.diagnostics import KHAT_DEGENERATE, KHAT_UNRELIABLE, importance_log_ratios, psis_khat
from models.families import FullRankGaussian, MeanFieldGaussian, make_family
from models.laplace import laplace_approximation


def _conjugate_problem(rows: int = 200, seed: int = 0):
    """BLR with fixed noise and a Gaussian prior, plus its exact Gaussian posterior (mean, covariance)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 3, generator=g) * torch.tensor([1.0, 10.0, 0.1]) + 5.0  # badly scaled, uncentred
    y = x @ torch.tensor([0.5, -0.1, 3.0]) + 1.0 + 0.5 * torch.randn(rows, generator=g)
    model = BayesianLinearRegression(3, Normal(torch.tensor(0.0), torch.tensor(2.0)),
                                     Normal(torch.tensor(0.0), torch.tensor(5.0)), noise_scale=0.5)
    design = torch.cat([x, torch.ones(rows, 1)], 1).double()
    prior_precision = torch.diag(torch.tensor([0.25, 0.25, 0.25, 0.04], dtype=torch.float64))
    precision = design.T @ design / 0.25 + prior_precision
    covariance = torch.linalg.inv(precision)
    mean = covariance @ (design.T @ y.double() / 0.25)
    return model, x, y, mean, covariance


def test_laplace_of_a_conjugate_model_is_its_exact_posterior():
    model, x, y, mean, covariance = _conjugate_problem()
    laplace = laplace_approximation(model, x, y)
    torch.testing.assert_close(laplace.mode.double(), mean, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(laplace.marginal_sd.double(), covariance.diagonal().sqrt(), rtol=1e-3, atol=0)
    torch.testing.assert_close((laplace.scale_tril @ laplace.scale_tril.T).double(), covariance, rtol=1e-3, atol=1e-7)


def test_laplace_refuses_an_improper_posterior():
    # More coefficients than rows and flat priors: the likelihood has a flat direction, so there is no proper mode.
    from models.priors import Flat

    model = BayesianLinearRegression(5, Flat(), Flat(), noise_scale=1.0)
    x = torch.eye(3, 5) * torch.tensor([1.5, -0.5, 2.0]).unsqueeze(1)  # no row touches the last two coefficients
    with pytest.raises(ValueError, match="not positive definite"):  # exactly, not up to the draw of random rows
        laplace_approximation(model, x, torch.tensor([0.3, -1.2, 0.8]))


@pytest.mark.parametrize("name", ["mean_field", "full_rank", "low_rank", "flow"])
def test_a_diagonal_preconditioner_only_changes_units(name):
    options = {"rank": 1} if name == "low_rank" else {}
    torch.manual_seed(0)
    plain = make_family(name, 3, init_scale=0.5, **options).precondition(torch.zeros(3), torch.ones(3))
    torch.manual_seed(0)
    scaled = make_family(name, 3, init_scale=0.5, **options)
    shift, scale = torch.tensor([1.0, -2.0, 30.0]), torch.tensor([0.01, 1.0, 10.0])
    scaled.precondition(shift, scale)
    noise = torch.randn(1000, plain.noise_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(scaled.transform_noise(noise), shift + scale * plain.transform_noise(noise))
        z = scaled.rsample(4)
        # log q changes by the log-Jacobian of the map, nothing else
        torch.testing.assert_close(scaled.log_prob(z), plain.log_prob((z - shift) / scale) - scale.log().sum())


def test_a_dense_preconditioner_whitens_the_full_rank_family():
    model, x, y, mean, covariance = _conjugate_problem()
    laplace = laplace_approximation(model, x, y)
    family = FullRankGaussian(4, init_scale=1.0).precondition(laplace.mode, laplace.marginal_sd, laplace.scale_tril)
    q = family.distribution()  # with u ~ N(0, I), q is the Laplace Gaussian, which is exact here
    torch.testing.assert_close(q.mean.double(), mean, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(q.covariance_matrix.double(), covariance, rtol=2e-3, atol=1e-7)
    with pytest.raises(ValueError, match="positive and finite"):
        MeanFieldGaussian(2).precondition(torch.zeros(2), torch.tensor([1.0, 0.0]))


def test_psis_khat_separates_the_exact_posterior_from_a_too_narrow_one():
    model, x, y, mean, covariance = _conjugate_problem()
    exact = FullRankGaussian(4, init_scale=1.0).precondition(mean.float(), covariance.diagonal().sqrt().float(),
                                                             torch.linalg.cholesky(covariance).float())
    assert psis_khat(model, exact, x, y, num_samples=4000) < 0.5
    # Mean-field at the exact conditional SDs, 1/sqrt(diag precision): the KL(q||p) optimum, too narrow when correlated.
    conditional_sd = torch.linalg.inv(covariance).diagonal().rsqrt().float()
    narrow = MeanFieldGaussian(4, init_scale=1.0).precondition(mean.float(), conditional_sd)
    # True k is 1 - (1 - rho^2) ~ 0.99 here; the estimate is noisy for heavy tails, so take the median of three seeds.
    khats = sorted(psis_khat(model, narrow, x, y, num_samples=16_000, seed=s) for s in range(3))
    assert khats[1] > KHAT_UNRELIABLE
    # Mean-field at the marginal SDs ignores a -0.99 correlation: far too wide across the ridge.
    wide = MeanFieldGaussian(4, init_scale=1.0).precondition(mean.float(), covariance.diagonal().sqrt().float())
    assert psis_khat(model, wide, x, y, num_samples=4000) > KHAT_UNRELIABLE
    # Fifty times wider still: a handful of draws carry all the weight, reported as the degenerate cap.
    wider = MeanFieldGaussian(4, init_scale=1.0).precondition(mean.float(), 50 * covariance.diagonal().sqrt().float())
    assert psis_khat(model, wider, x, y, num_samples=4000) == KHAT_DEGENERATE


def test_psis_khat_with_learned_noise_is_finite():
    model = BayesianLinearRegression(1, Normal(torch.tensor(0.0), torch.tensor(1.0)),
                                     Normal(torch.tensor(0.0), torch.tensor(1.0)), noise_prior=HalfNormal(torch.tensor(1.0)))
    x, y = torch.randn(50, 1), torch.randn(50)
    laplace = laplace_approximation(model, x, y)
    family = MeanFieldGaussian(3, init_scale=1.0).precondition(laplace.mode, laplace.marginal_sd)
    assert 0.0 < psis_khat(model, family, x, y, num_samples=1000) < 1.5


def test_regression_calibration_is_nominal_for_the_true_model_and_not_for_an_overconfident_one():
    from models.calibration import regression_calibration

    g = torch.Generator().manual_seed(3)
    x = torch.randn(4000, 2, generator=g)
    y = x @ torch.tensor([1.0, -0.5]) + 0.2 + 0.8 * torch.randn(4000, generator=g)
    truth = MeanFieldGaussian(3, init_scale=1e-4, init_loc=torch.tensor([1.0, -0.5, 0.2]))
    prior = Normal(torch.tensor(0.0), torch.tensor(1.0))
    calibrated = regression_calibration(BayesianLinearRegression(2, prior, prior, noise_scale=0.8), truth, x, y)
    assert calibrated.coverage[0.5] == pytest.approx(0.5, abs=0.03)
    assert calibrated.coverage[0.9] == pytest.approx(0.9, abs=0.02)
    assert calibrated.pit_ks < 0.03
    overconfident = regression_calibration(BayesianLinearRegression(2, prior, prior, noise_scale=0.3), truth, x, y)
    assert overconfident.coverage[0.9] < 0.5 and overconfident.pit_ks > 0.2


def _log_marginal_likelihood(x, y, prior_sd=(2.0, 2.0, 2.0, 5.0), noise=0.5) -> float:
    from torch.distributions import MultivariateNormal as MVN

    design = torch.cat([x, torch.ones(len(x), 1)], 1).double()
    cov = design @ torch.diag(torch.tensor(prior_sd, dtype=torch.float64) ** 2) @ design.T
    cov = cov + noise**2 * torch.eye(len(x), dtype=torch.float64)
    return float(MVN(torch.zeros(len(x), dtype=torch.float64), covariance_matrix=cov).log_prob(y.double()))


def test_iwae_bounds_the_evidence_above_the_elbo_and_tightens_with_more_samples():
    from models.diagnostics import importance_diagnostics

    model, x, y, mean, covariance = _conjugate_problem(rows=60)
    evidence = _log_marginal_likelihood(x, y)
    # The exact posterior: every importance ratio equals p(y), so ELBO = IWAE = log p(y) and the gap is zero.
    exact = FullRankGaussian(4, init_scale=1.0).precondition(mean.float(), covariance.diagonal().sqrt().float(),
                                                             torch.linalg.cholesky(covariance).float())
    d = importance_diagnostics(model, exact, x, y, num_samples=2000)
    assert d.elbo == pytest.approx(evidence, abs=0.05) and d.iwae == pytest.approx(evidence, abs=0.05)
    assert d.approximation_gap < 0.05
    # A mean-field q at the conditional SDs: ELBO < IWAE_K <= log p(y), and the bound rises with K.
    conditional_sd = torch.linalg.inv(covariance).diagonal().rsqrt().float()
    q = MeanFieldGaussian(4, init_scale=1.0).precondition(mean.float(), conditional_sd)
    bounds = []
    for k in (1, 10, 100, 1000):
        estimates = [importance_diagnostics(model, q, x, y, num_samples=k, seed=s).iwae for s in range(200 // k + 20)]
        bounds.append(sum(estimates) / len(estimates))
    elbo = importance_diagnostics(model, q, x, y, num_samples=20_000).elbo
    assert bounds[0] == pytest.approx(elbo, abs=0.3)
    assert bounds[0] < bounds[1] < bounds[2] < bounds[3] <= evidence + 0.05
    assert evidence - elbo > 1.0  # the mean-field gap is real here (a -0.99 correlation is ignored)


def test_importance_ratios_do_not_depend_on_the_chunking_and_a_scaled_sample_tracks_the_whole_table(monkeypatch):
    import models.objectives as objectives

    model, x, y, mean, covariance = _conjugate_problem(rows=3000)
    q = MeanFieldGaussian(4, init_scale=1.0).precondition(mean.float(), covariance.diagonal().sqrt().float())
    # 4,000 draws: the default chunk is 524 rows, so the 3,000 rows take six likelihood evaluations.
    chunked = importance_log_ratios(model, q, x, y, num_samples=4000)
    with monkeypatch.context() as patched:
        patched.setattr(objectives, "CHUNK_ELEMENTS", 4000 * 3000)
        whole = importance_log_ratios(model, q, x, y, num_samples=4000)
    torch.testing.assert_close(chunked, whole, rtol=1e-9, atol=1e-6)
    # A 1,000-row sample scaled by N/n: the same ELBO up to the sample's noise, far from the unscaled sample's.
    keep = torch.randperm(3000, generator=torch.Generator().manual_seed(0))[:1000]
    scaled = importance_log_ratios(model, q, x[keep], y[keep], num_samples=4000, dataset_size=3000)
    unscaled = importance_log_ratios(model, q, x[keep], y[keep], num_samples=4000)
    assert abs(scaled.mean() - whole.mean()) < 0.02 * abs(whole.mean())
    assert abs(unscaled.mean() - whole.mean()) > 0.5 * abs(whole.mean())
