"""Variational objectives as plain functions of (model, family, batch).

The ELBO uses reparameterisation gradients with ``num_particles`` draws taken in one vectorised call, and a minibatch
of ``B`` rows out of ``N`` scales the likelihood by ``N / B`` so that the estimate is unbiased for the full-data ELBO
(Hoffman et al. 2013). The KL term is analytic when the family and prior admit it, Monte-Carlo otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from models.families import VariationalFamily

__all__ = ["CHUNK_ELEMENTS", "row_chunks", "ELBOTerms", "HeldOutFit", "elbo", "held_out_fit", "predictive_nll"]

#: Draws x rows per evaluation over many rows (held-out fit, importance ratios, predictive summaries, calibration):
#: 1,000 draws take 2,097 rows at a time, 64 draws 32,768.
CHUNK_ELEMENTS = 2**21


def row_chunks(rows: int, num_samples: int) -> list[slice]:
    """Slices of ``rows`` rows, each small enough that ``num_samples`` draws over it stay within ``CHUNK_ELEMENTS``
    (one slice of every row when they all fit)."""
    chunk = max(1, CHUNK_ELEMENTS // num_samples)
    return [slice(start, start + chunk) for start in range(0, rows, chunk)] or [slice(0, 0)]


@dataclass(frozen=True)
class ELBOTerms:
    """A stochastic estimate of the full-data ELBO and its parts (all scalar tensors, in nats).

    Attributes:
        elbo: ``expected_log_likelihood - kl``.
        expected_log_likelihood: E_q[log p(y | x, z)], scaled from the minibatch to the full dataset.
        kl: KL(q || prior), analytic or estimated from the same draws.
        analytic_kl: whether ``kl`` is the closed form.
    """

    elbo: torch.Tensor
    expected_log_likelihood: torch.Tensor
    kl: torch.Tensor
    analytic_kl: bool


def elbo(
    model,
    family: VariationalFamily,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    dataset_size: int,
    num_particles: int = 1,
    antithetic: bool = False,
) -> ELBOTerms:
    """Estimate the ELBO of ``model`` under ``family`` from one minibatch ``(x, y)``.

    Args:
        model: exposes ``log_likelihood(z, x, y) -> (S, B)``, ``log_prior(z) -> (S,)`` and ``gaussian_prior()``.
        family: the variational distribution over the flat latent vector.
        x, y: the minibatch, ``(B, p)`` and ``(B,)``.
        dataset_size: ``N``, the number of rows the minibatch is drawn from.
        num_particles: Monte-Carlo draws of z, evaluated in one batched call.
        antithetic: draw z in mirrored pairs (see :meth:`VariationalFamily.rsample`).
    """
    if num_particles < 1:
        raise ValueError(f"num_particles must be >= 1, got {num_particles}")
    batch_size = x.shape[0]
    if batch_size == 0:
        raise ValueError("the minibatch is empty")
    prior = model.gaussian_prior()
    log_q = None
    if prior is not None and family.closed_form_kl:
        z, kl = family.rsample_and_kl(num_particles, prior, antithetic=antithetic)
    else:
        z, log_q = family.rsample_with_log_prob(num_particles, antithetic=antithetic)
        kl = None
    if getattr(model, "local_reparameterization", False):
        log_lik = model.local_log_likelihood(family, z, x, y)
    else:
        log_lik = model.log_likelihood(z, x, y)
    # the mean over draws of each draw's summed log-likelihood, scaled by N / |B|
    expected_log_likelihood = log_lik.sum() * (dataset_size / (batch_size * log_lik.shape[0]))
    analytic = kl is not None
    if not analytic:
        kl = ((family.log_prob(z) if log_q is None else log_q) - model.log_prior(z)).mean()
    return ELBOTerms(expected_log_likelihood - kl, expected_log_likelihood, kl, analytic)


def _kl(model, family: VariationalFamily, z: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """KL(q || prior): closed form when the prior is Gaussian and torch has one, else estimated from draws ``z``."""
    prior = model.gaussian_prior()
    if prior is not None:
        try:
            return family.kl_to(prior), True
        except NotImplementedError:
            pass
    return (family.log_prob(z) - model.log_prior(z)).mean(), False


def predictive_nll(model, family: VariationalFamily, x: torch.Tensor, y: torch.Tensor, num_samples: int = 64,
                   generator: torch.Generator | None = None):
    """Mean negative log posterior-predictive density per row, ``-log (1/S) sum_s p(y | x, z_s)``."""
    with torch.no_grad():
        z = family.rsample(num_samples, generator=generator)
        return _predictive_nll(model.log_likelihood(z, x, y))


def _predictive_nll(log_lik: torch.Tensor) -> torch.Tensor:
    """``-mean_rows log (1/S) sum_s exp(log_lik[s, row])`` for a ``(S, B)`` log-likelihood matrix."""
    return -(torch.logsumexp(log_lik, dim=0) - math.log(log_lik.shape[0])).mean()


@dataclass(frozen=True)
class HeldOutFit:
    """Fit of q to held-out rows, per datum (scalar tensors, nats).

    Attributes:
        elbo_per_datum: mean over rows of E_q[log p(y | x, z)] minus KL(q || prior) / N_train.
        predictive_nll: mean over rows of -log (1/S) sum_s p(y | x, z_s).
    """

    elbo_per_datum: torch.Tensor
    predictive_nll: torch.Tensor


def held_out_fit(model, family: VariationalFamily, x: torch.Tensor, y: torch.Tensor, *, train_size: int,
                 num_samples: int = 64, antithetic: bool = False,
                 generator: torch.Generator | None = None) -> HeldOutFit:
    """Validation ELBO per datum and predictive NLL from one shared set of ``num_samples`` draws of z
    (from ``generator`` when given). Without a Gaussian prior the KL is Monte-Carlo, with each draw's log q read from
    the noise that made it (:meth:`~models.families.VariationalFamily.rsample_with_log_prob`: no distribution
    object, no triangular solve). The likelihood is evaluated ``CHUNK_ELEMENTS // num_samples`` rows at a time, so
    that memory does not grow with the held-out split (a network's hidden layer holds draws x rows x units)."""
    with torch.no_grad():
        if model.gaussian_prior() is None or not family.closed_form_kl:
            z, log_q = family.rsample_with_log_prob(num_samples, antithetic=antithetic, generator=generator)
            kl = (log_q - model.log_prior(z)).mean()
        else:
            z = family.rsample(num_samples, antithetic=antithetic, generator=generator)
            kl, _ = _kl(model, family, z)
        rows, chunks = x.shape[0], row_chunks(x.shape[0], num_samples)
        if len(chunks) == 1:
            log_lik = model.log_likelihood(z, x, y)
            return HeldOutFit(log_lik.mean() - kl / train_size, _predictive_nll(log_lik))
        total, log_predictive = 0.0, 0.0
        for chunk in chunks:
            log_lik = model.log_likelihood(z, x[chunk], y[chunk])
            total = total + log_lik.sum()
            log_predictive = log_predictive + (torch.logsumexp(log_lik, 0) - math.log(num_samples)).sum()
        return HeldOutFit(total / (num_samples * rows) - kl / train_size, -log_predictive / rows)
