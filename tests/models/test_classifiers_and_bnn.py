"""Logistic/softmax regression, the Bayesian neural network, classifier calibration and predictive uncertainty."""

import math

import pytest
import torch
from torch.distributions import Normal

from models.bnn import BayesianNeuralNetwork
from models.calibration import classification_calibration
from models.families import MeanFieldGaussian
from models.logistic import BayesianLogisticRegression
from models.objectives import elbo
from models.predictive import class_predictive


def _point_mass(z: torch.Tensor, scale: float = 1e-4) -> MeanFieldGaussian:
    family = MeanFieldGaussian(z.numel(), init_scale=scale, init_loc=z)
    return family


def test_logistic_likelihood_is_the_bernoulli_log_odds_model():
    torch.manual_seed(0)
    model = BayesianLogisticRegression(3, 2, Normal(0.0, 1.0), Normal(0.0, 5.0))
    assert model.latent_dim == 4 and [b.name for b in model.blocks] == ["weights", "intercept"]
    z, x = torch.randn(5, 4), torch.randn(7, 3)
    y = torch.randint(0, 2, (7,))
    eta = x @ z[:, :3].T + z[:, 3]  # (B, S)
    expected = torch.distributions.Bernoulli(logits=eta.T).log_prob(y.float())
    torch.testing.assert_close(model.log_likelihood(z, x, y), expected)
    torch.testing.assert_close(model.log_likelihood(z, x, y.float()), expected)  # float labels are accepted


def test_softmax_likelihood_and_analytic_kl():
    torch.manual_seed(1)
    model = BayesianLogisticRegression(2, 3, Normal(0.0, 1.0), Normal(0.0, 2.0))
    assert model.latent_dim == 2 * 3 + 3
    z, x, y = torch.randn(4, 9), torch.randn(6, 2), torch.tensor([0, 1, 2, 2, 1, 0])
    logits = torch.einsum("bp,spk->sbk", x, z[:, :6].reshape(4, 2, 3)) + z[:, None, 6:]
    expected = torch.distributions.Categorical(logits=logits).log_prob(y)
    torch.testing.assert_close(model.log_likelihood(z, x, y), expected)
    family = MeanFieldGaussian(9, init_scale=0.3)
    analytic = family.kl_to(model.gaussian_prior()).detach()
    draws = family.rsample(200_000)
    mc = (family.log_prob(draws) - model.log_prior(draws)).mean().detach()
    assert float(analytic) == pytest.approx(float(mc), abs=0.02)


def _logistic_data(n=4000, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    truth = torch.tensor([1.5, -1.0, 0.3])
    p = torch.sigmoid(x @ truth[:2] + truth[2])
    y = torch.bernoulli(p, generator=g).long()
    return x, y, truth


def test_ece_is_low_for_the_true_model_and_high_for_an_overconfident_one():
    x, y, truth = _logistic_data()
    model = BayesianLogisticRegression(2, 2, Normal(0.0, 1.0), Normal(0.0, 1.0))
    calibrated = classification_calibration(model, _point_mass(truth), x, y, num_samples=50)
    overconfident = classification_calibration(model, _point_mass(truth * 8), x, y, num_samples=50)
    assert calibrated.ece < 0.03
    assert overconfident.ece > 0.15
    assert overconfident.brier > calibrated.brier
    assert calibrated.bin_count.sum() == len(y)


def test_mutual_information_is_zero_for_a_point_mass_and_positive_for_a_wide_posterior():
    x, _, truth = _logistic_data(200)
    model = BayesianLogisticRegression(2, 2, Normal(0.0, 1.0), Normal(0.0, 1.0))
    sharp = class_predictive(model, _point_mass(truth), x, num_samples=200)
    wide = class_predictive(model, _point_mass(truth, scale=2.0), x, num_samples=200)
    torch.testing.assert_close(sharp.probs.sum(-1), torch.ones(200))
    assert float(sharp.mutual_information.max()) < 1e-4
    assert float(wide.mutual_information.mean()) > 0.05
    assert bool((wide.entropy <= math.log(2) + 1e-6).all() and (wide.mutual_information <= wide.entropy + 1e-6).all())


def _bnn(local: bool, task="regression"):
    head = {"noise_scale": 0.5} if task == "regression" else {"num_classes": 3}
    return BayesianNeuralNetwork(4, [8, 8], Normal(0.0, 1.0), task=task, local_reparameterization=local, **head)


def test_bnn_forward_matches_a_plain_mlp_for_one_weight_draw():
    torch.manual_seed(2)
    model = _bnn(False)
    z, x = torch.randn(1, model.latent_dim), torch.randn(5, 4)
    h = x
    for i, (fan_in, fan_out, w, b) in enumerate(model.layers):
        h = h @ z[0, w].view(fan_in, fan_out) + z[0, b]
        h = torch.tanh(h) if i < len(model.layers) - 1 else h
    torch.testing.assert_close(model.outputs(z, x)[0], h)
    assert model.predictive(z, x).mean.shape == (1, 5)
    classifier = _bnn(False, "classification")
    assert classifier.predictive(torch.randn(3, classifier.latent_dim), x).probs.shape == (3, 5, 3)


def test_bnn_log_likelihood_is_its_predictives_density():
    """The closed-form Gaussian log-likelihood of the training step, for fixed and learned noise, and the classifier's,
    are the densities of the torch.distributions predictive."""
    from torch.distributions import HalfNormal

    x = torch.randn(6, 4)
    learned = BayesianNeuralNetwork(4, [8], Normal(0.0, 1.0), noise_prior=HalfNormal(1.0))
    for model, y in ((_bnn(False), torch.randn(6)), (learned, torch.randn(6)),
                     (_bnn(False, "classification"), torch.randint(0, 3, (6,)).float())):
        z = torch.randn(3, model.latent_dim)
        expected = model.predictive(z, x).log_prob(y.long() if model.task == "classification" else y)
        torch.testing.assert_close(model.log_likelihood(z, x, y), expected)


def test_local_reparameterisation_estimates_the_same_elbo_with_less_gradient_noise():
    torch.manual_seed(3)
    x = torch.randn(256, 4)
    y = torch.sin(x[:, 0]) + 0.5 * torch.randn(256)
    results = {}
    for local in (False, True):
        model = _bnn(local)
        torch.manual_seed(4)
        family = MeanFieldGaussian(model.latent_dim, init_scale=0.3, init_loc=model.initial_loc())
        values, grads = [], []
        for _ in range(300):
            family.zero_grad()
            terms = elbo(model, family, x, y, dataset_size=256, num_particles=1)
            terms.elbo.backward()
            values.append(float(terms.expected_log_likelihood))
            grads.append(family.loc.grad.clone())
        values, grads = torch.tensor(values), torch.stack(grads)
        results[local] = (values.mean(), values.std() / math.sqrt(len(values)), grads.var(0).sum())
    (mean_w, se_w, var_w), (mean_l, se_l, var_l) = results[False], results[True]
    assert abs(float(mean_w - mean_l)) < 4 * math.hypot(se_w, se_l)
    assert var_l < 0.5 * var_w


def test_local_reparameterisation_refuses_other_families():
    from models.families import FullRankGaussian

    model = _bnn(True)
    family = FullRankGaussian(model.latent_dim)
    with pytest.raises(ValueError, match="mean-field Gaussian"):
        elbo(model, family, torch.randn(3, 4), torch.randn(3), dataset_size=3)


def test_predictive_summaries_and_calibration_in_row_chunks_are_those_of_one_evaluation(monkeypatch):
    """Scoring and calibration take rows in chunks (draws x rows within CHUNK_ELEMENTS): the same draws of z, so the
    same numbers as one evaluation over every row."""
    import models.objectives as objectives
    from models.calibration import regression_calibration
    from models.predictive import posterior_predictive

    torch.manual_seed(4)
    regression, classifier = _bnn(False), _bnn(False, "classification")
    family = MeanFieldGaussian(regression.latent_dim, init_scale=0.3, init_loc=torch.randn(regression.latent_dim))
    wide = MeanFieldGaussian(classifier.latent_dim, init_scale=0.3, init_loc=torch.randn(classifier.latent_dim))
    x = torch.randn(2500, 4)
    y, labels = torch.randn(2500), torch.randint(0, 3, (2500,))

    def evaluate():
        summary = posterior_predictive(regression, family, x, num_samples=1000,
                                       generator=torch.Generator().manual_seed(1))
        classes = class_predictive(classifier, wide, x, num_samples=1000, generator=torch.Generator().manual_seed(2))
        pit = regression_calibration(regression, family, x, y, num_samples=1000, seed=3).pit
        ece = classification_calibration(classifier, wide, x, labels, num_samples=1000, seed=4).ece
        return summary, classes, pit, ece

    assert len(objectives.row_chunks(2500, 1000)) == 2  # 2,097 rows, then 403
    rows_per_call = []
    for model in (regression, classifier):
        def predictive(z, x, model=model, inner=model.predictive):
            rows_per_call.append(x.shape[0])
            return inner(z, x)
        monkeypatch.setattr(model, "predictive", predictive)
    chunked = evaluate()
    assert rows_per_call == [2097, 403] * 4  # each of the four evaluations, chunk by chunk
    monkeypatch.setattr(objectives, "CHUNK_ELEMENTS", 1000 * 2500)
    assert len(objectives.row_chunks(2500, 1000)) == 1
    whole = evaluate()
    for name in ("mean", "sd"):
        torch.testing.assert_close(getattr(chunked[0], name), getattr(whole[0], name))
    for level in (0.05, 0.95):
        torch.testing.assert_close(chunked[0].quantiles[level], whole[0].quantiles[level], atol=1e-4, rtol=1e-4)
    for name in ("probs", "entropy", "mutual_information"):
        torch.testing.assert_close(getattr(chunked[1], name), getattr(whole[1], name))
    torch.testing.assert_close(chunked[2], whole[2])
    assert chunked[3] == pytest.approx(whole[3], abs=1e-6)
    assert chunked[0].mean.shape == (2500,) and float(chunked[1].mutual_information.mean()) > 0.01
