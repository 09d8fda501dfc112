"""The VAE and amortized objectives: IWAE vs ELBO, the amortization gap, free bits and KL annealing."""

import pytest
import torch

from models.amortized import (
    amortization_gaps,
    amortized_bound,
    collapse_statistics,
    importance_log_weights,
    iwae_bound,
    log_mean_exp,
)
from models.vae import VariationalAutoencoder


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    x = torch.tensor(load_digits().data, dtype=torch.float32)
    return x[:1200], x[1200:1500]


def _vae(decoder="factorized", latent_dim=4, seed=0):
    torch.manual_seed(seed)
    return VariationalAutoencoder(64, latent_dim, encoder_hidden=[64], decoder_hidden=[64], decoder=decoder)


def _train(model, x, steps, *, lr=3e-3, kl_warmup=0, free_bits=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for step in range(steps):
        batch = x[torch.randint(0, len(x), (128,), generator=g)]
        weight = min(1.0, step / kl_warmup) if kl_warmup else 1.0
        loss = -amortized_bound(model, batch, kl_weight=weight, free_bits=free_bits).objective
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


def test_iwae_bound_is_above_the_elbo_and_tightens_with_k(digits):
    train, held_out = digits
    model = _train(_vae(), train, 150)
    torch.manual_seed(1)
    elbo = float(amortized_bound(model, held_out, num_samples=500).elbo.detach())
    bounds = [float(iwae_bound(model, held_out, k).mean()) for k in (1, 10, 100)]
    assert bounds[0] == pytest.approx(elbo, abs=1.0)  # K = 1 is the ELBO (up to Monte-Carlo noise)
    assert elbo < bounds[1] < bounds[2]
    # The training objective with kind="iwae" is the same bound.
    torch.manual_seed(2)
    iwae_objective = float(amortized_bound(model, held_out, kind="iwae", num_samples=100).objective.detach())
    assert iwae_objective == pytest.approx(bounds[2], abs=0.5)


def test_one_set_of_draws_gives_the_elbo_the_iwae_bound_and_the_collapse_measures(digits):
    # What each validation of a VAE computes: one encoding, one set of draws.
    train, held_out = digits
    model = _train(_vae(), train, 100)
    log_weights = importance_log_weights(model, held_out, 200, generator=torch.Generator().manual_seed(4))
    assert log_weights.shape == (200, len(held_out))
    # Its log-mean-exp is the IWAE bound of the same draws, exactly (the draws come in the same chunks in both).
    iwae = iwae_bound(model, held_out, 200, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(log_mean_exp(log_weights), iwae, rtol=0, atol=0)
    # Its mean is the ELBO: the analytic-KL estimate with many draws agrees within Monte-Carlo error.
    with torch.no_grad():
        reference = amortized_bound(model, held_out, num_samples=2000, generator=torch.Generator().manual_seed(5))
    standard_error = float(log_weights.var(0).mean() / log_weights.numel()) ** 0.5
    assert float(log_weights.mean()) == pytest.approx(float(reference.elbo), abs=4 * standard_error)
    # The collapse measures from the encoder's q the caller holds are those of a fresh encoding.
    with torch.no_grad():
        given = collapse_statistics(model, held_out, q=model.encode(held_out))
    fresh = collapse_statistics(model, held_out)
    assert torch.equal(given.kl_per_dim, fresh.kl_per_dim) and given.active_units == fresh.active_units


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))])
def test_importance_weights_come_in_chunks_sized_for_the_device(digits, device, monkeypatch):
    # A default validation: 4,096 rows x 64 draws. On the CPU, chunks that stay in cache (one draw of 4,096 rows at a
    # time); on CUDA, where launching a chunk's kernels costs more than their arithmetic, all 64 draws at once.
    model = _vae().to(device)
    rows = digits[0][:1024].repeat(4, 1).to(device)
    evaluate, chunks = model.log_joint_minus_q, []
    monkeypatch.setattr(model, "log_joint_minus_q", lambda z, *rest: chunks.append(len(z)) or evaluate(z, *rest))
    weights = importance_log_weights(model, rows, 64, generator=torch.Generator(device).manual_seed(0))
    assert weights.shape == (64, 4096)
    assert chunks == ([1] * 64 if device == "cpu" else [64])
    # Chunked either way, the draws estimate the same ELBO.
    other = importance_log_weights(model, rows, 64, chunk=64 if device == "cpu" else 1,
                                   generator=torch.Generator(device).manual_seed(1))
    standard_error = float((weights.var(0).mean() / weights.numel()) ** 0.5)
    assert float(other.mean()) == pytest.approx(float(weights.mean()), abs=5 * standard_error)


def test_amortization_gap_is_non_negative_and_shrinks_as_the_encoder_trains(digits):
    train, held_out = digits
    rows = held_out[:64]
    model = _train(_vae(), train, 30)
    early = amortization_gaps(model, rows, refine_steps=50)
    _train(model, train, 600, seed=1)
    late = amortization_gaps(model, rows, refine_steps=50)
    for gaps in (early, late):
        assert gaps.amortization_gap > -0.5  # >= 0 up to Monte-Carlo noise (common random numbers keep it small)
        assert gaps.approximation_gap > -0.5
        assert gaps.log_marginal >= gaps.refined_elbo - 0.5
    assert late.amortization_gap < 0.5 * early.amortization_gap
    assert late.elbo > early.elbo


def test_measuring_the_gaps_leaves_the_model_unchanged(digits):
    _, held_out = digits
    model = _vae()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    amortization_gaps(model, held_out[:16], refine_steps=5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_free_bits_leave_small_kl_unpenalised_and_kl_weight_scales_it():
    torch.manual_seed(0)
    model = _vae()
    x = torch.randint(0, 17, (32, 64)).float()
    torch.manual_seed(1)
    plain = amortized_bound(model, x)
    torch.manual_seed(1)
    floored = amortized_bound(model, x, free_bits=10.0)
    torch.manual_seed(1)
    annealed = amortized_bound(model, x, kl_weight=0.0)
    # An untrained encoder's KL per dimension is far below 10 nats: each dimension is charged the floor instead.
    assert bool((plain.kl_per_dim < 10.0).all())
    torch.testing.assert_close(floored.objective, plain.expected_log_likelihood - 10.0 * 4)
    torch.testing.assert_close(annealed.objective, plain.expected_log_likelihood)
    torch.testing.assert_close(floored.elbo, plain.elbo)  # the reported ELBO is always the plain one
    with pytest.raises(ValueError, match="free bits"):
        amortized_bound(model, x, kind="iwae", num_samples=2, free_bits=1.0)


def test_active_units_count_dimensions_whose_encoder_mean_varies(digits):
    _, held_out = digits
    model = _vae(latent_dim=3)
    with torch.no_grad():  # make dimension 0 ignore the input: its mean is constant across rows
        last = model.encoder[-1]
        last.weight[0].zero_()
        model.encoder[0].weight.mul_(5.0)
    stats = collapse_statistics(model, held_out, threshold=0.01)
    q = model.encode(held_out)
    expected = int((q.loc.var(0) > 0.01).sum())
    assert stats.active_units == expected and expected < 3
    assert stats.kl_per_dim.shape == (3,)


@pytest.mark.parametrize("likelihood", ["binomial", "bernoulli"])
def test_the_likelihood_and_kl_in_closed_form_are_torch_distributions_densities(digits, likelihood):
    from torch.distributions import kl_divergence

    torch.manual_seed(0)
    model = VariationalAutoencoder(64, 4, encoder_hidden=[32], decoder_hidden=[32], likelihood=likelihood)
    x = digits[0][:50] if likelihood == "binomial" else (digits[0][:50] > 8).float()
    with torch.no_grad():
        q = model.encode(x)
        z = q.rsample((3,)) * 4  # large draws too: logits far from 0, where softplus and log1p(exp) part ways
        expected = model.likelihood_distribution(z, x).log_prob(x)
        assert torch.allclose(model.log_likelihood(z, x), expected, rtol=1e-5, atol=1e-3)
        # The normaliser held for a table (as training holds it) gives the same density, row by row.
        table = model.log_normaliser(digits[0][:200] if likelihood == "binomial" else (digits[0][:200] > 8).float())
        torch.testing.assert_close(model.log_likelihood(z, x, table[:50]), model.log_likelihood(z, x))
        assert likelihood == "binomial" or not table.any()
        assert torch.allclose(model.kl_to_prior(q), kl_divergence(q, model.prior(q.loc)), rtol=1e-5, atol=1e-6)
        log_weights = expected + (model.prior(z).log_prob(z) - q.log_prob(z)).sum(-1)
        assert torch.allclose(model.log_joint_minus_q(z, x, q), log_weights, rtol=1e-5, atol=1e-3)


def test_the_bound_with_its_tables_normaliser_is_the_bound_and_training_holds_it_per_row(digits):
    from pipelines.config.schema import ObjectiveConfig, TrainSettings
    from pipelines.training.amortized_module import AmortizedSVIModule

    model, x = _vae(), digits[0][:256]
    module = AmortizedSVIModule(model, ObjectiveConfig(), TrainSettings(), (x, torch.zeros(256)))
    held, normaliser = module.train_xy
    assert held is x and torch.equal(normaliser, model.log_choose(x)) and module.normalised
    for kind, samples in (("elbo", 1), ("iwae", 5)):
        plain = amortized_bound(model, x[:128], kind=kind, num_samples=samples,
                                generator=torch.Generator().manual_seed(1))
        given = amortized_bound(model, x[:128], kind=kind, num_samples=samples,
                                generator=torch.Generator().manual_seed(1), normaliser=normaliser[:128])
        for name in ("objective", "elbo", "expected_log_likelihood", "kl"):
            torch.testing.assert_close(getattr(given, name), getattr(plain, name))


@pytest.mark.parametrize("decoder", ["factorized", "autoregressive"])
def test_the_single_draw_elbo_is_the_bound_of_that_draw(digits, decoder):
    # One draw per row is decoded as a (B, d) matrix; the bound is that of the same draw as a (1, B, d) batch.
    model, x = _vae(decoder), digits[0][:128]
    with torch.no_grad():
        terms = amortized_bound(model, x, generator=torch.Generator().manual_seed(3))
        q = model.encode(x)
        z = q.loc + q.scale * torch.randn((1, *q.loc.shape), generator=torch.Generator().manual_seed(3))
        expected = model.log_likelihood(z, x).mean() - model.kl_to_prior(q).mean(0).sum()
    torch.testing.assert_close(terms.elbo, expected)
    assert terms.objective is terms.elbo
