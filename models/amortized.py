"""Objectives and diagnostics of amortized models (per-row latents, an encoder ``q(z | x)``), e.g. the VAE.

Bounds are per datum (nats). :func:`amortized_bound` is the training objective: the ELBO, or the importance-weighted
bound of Burda, Grosse & Salakhutdinov (2016), with a KL weight for annealing (Bowman et al. 2016) and free bits
(Kingma et al. 2016). :func:`amortization_gaps` splits the inference gap as Cremer, Li & Duvenaud (2018) do, and
:func:`collapse_statistics` measures posterior collapse (KL per dimension, active units; Burda et al. 2016).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.distributions import Normal

__all__ = [
    "AmortizedTerms",
    "amortized_bound",
    "iwae_bound",
    "importance_log_weights",
    "log_mean_exp",
    "AmortizationGaps",
    "amortization_gaps",
    "CollapseStatistics",
    "collapse_statistics",
]


@dataclass(frozen=True)
class AmortizedTerms:
    """One minibatch's bound and its parts, per datum (scalar tensors, nats; ``kl_per_dim`` has shape ``(d,)``).

    Attributes:
        objective: what training maximises (the configured bound with KL weight and free bits applied).
        elbo: the plain ELBO, ``expected_log_likelihood - kl``, whatever the objective.
        expected_log_likelihood: E_q[log p(x | z)].
        kl: KL(q(z | x) || p(z)), analytic, summed over latent dimensions.
        kl_per_dim: the minibatch-average KL of each latent dimension.
    """

    objective: torch.Tensor
    elbo: torch.Tensor
    expected_log_likelihood: torch.Tensor
    kl: torch.Tensor
    kl_per_dim: torch.Tensor


def amortized_bound(model, x: torch.Tensor, *, kind: str = "elbo", num_samples: int = 1, kl_weight: float = 1.0,
                    free_bits: float = 0.0, generator: torch.Generator | None = None,
                    normaliser: torch.Tensor | None = None) -> AmortizedTerms:
    """The training bound of an amortized model on minibatch ``x``, averaged over its rows.

    Args:
        model: exposes ``encode(x) -> Normal``, ``prior(z)``, ``log_likelihood(z, x) -> (K, B)`` and
            ``kl_to_prior(q) -> (B, d)``.
        kind: ``"elbo"`` or ``"iwae"``.
        num_samples: draws of z per row (K); the IWAE bound tightens as K grows.
        kl_weight: weight of the KL term (ELBO) or of ``log p(z) - log q(z | x)`` (IWAE); 1 is the true bound.
        free_bits: per-dimension floor (nats) under which the minibatch-average KL is not penalised (ELBO only).
        generator: draws z from it (default: the global generator, as in training).
        normaliser: the rows' ``model.log_normaliser(x)`` (the part of ``log p(x | z)`` constant in z) where the
            caller computed it once for its table; else the model computes it.
    """
    if kind not in ("elbo", "iwae"):
        raise ValueError(f"kind must be 'elbo' or 'iwae', got {kind!r}")
    if kind == "iwae" and free_bits:
        raise ValueError("free bits apply to the KL term of the ELBO; the IWAE bound has none")
    q = model.encode(x)
    # (K, B, d); one draw of the ELBO as a (B, d) matrix, the same values: the decoder's layers are then addmm
    z = _rsample(q, None if kind == "elbo" and num_samples == 1 else num_samples, generator)
    log_lik = model.log_likelihood(z, x) if normaliser is None else model.log_likelihood(z, x, normaliser)  # (K, B)
    kl_rows = model.kl_to_prior(q)  # (B, d)
    kl_per_dim = kl_rows.mean(0)
    expected_log_likelihood = log_lik.mean()
    kl = kl_per_dim.sum()
    elbo = expected_log_likelihood - kl
    if kind == "iwae":
        log_weights = log_lik + kl_weight * (model.prior(z).log_prob(z) - q.log_prob(z)).sum(-1)
        objective = (torch.logsumexp(log_weights, 0) - math.log(num_samples)).mean()
    elif kl_weight == 1.0 and not free_bits:
        objective = elbo  # the plain ELBO: the same tensor, no further operations in the step's graph
    else:
        penalised = torch.clamp(kl_per_dim, min=free_bits).sum() if free_bits else kl
        objective = expected_log_likelihood - kl_weight * penalised
    return AmortizedTerms(objective, elbo, expected_log_likelihood, kl, kl_per_dim)


def iwae_bound(model, x: torch.Tensor, num_samples: int, q: Normal | None = None, chunk: int | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-row importance-weighted bound ``log (1/K) sum_k p(x, z_k) / q(z_k | x)``, shape ``(B,)``.

    With ``K = 1`` it is the ELBO; it never decreases in expectation as ``K`` grows and tends to ``log p(x)``.
    ``q`` defaults to the encoder's; ``chunk``: as for :func:`importance_log_weights`.
    """
    return log_mean_exp(importance_log_weights(model, x, num_samples, q=q, chunk=chunk, generator=generator))


#: Draws x rows the decoder evaluates at once in :func:`importance_log_weights`. Larger chunks leave the cache: all
#: 64 draws of 270 digits at once (8.8 MB of hidden units) took 18.4 ms against 8.9 ms in chunks of 8 draws, and all
#: 64 of 4,096 rows 2.9 times as long as one draw at a time (one thread; docs/benchmark-log.md).
DRAW_ROWS_PER_CHUNK = 4096

#: The same on a CUDA device, where what costs is not the cache but the host launching each chunk's kernels: in
#: chunks of 4,096 draws x rows a validation of 4,096 rows x 64 draws took 64 evaluations, 22-24 ms on an H200 (most
#: of a VAE fit's time there); 2^18 holds them in one, and bounds the decoder's hidden units at 2^18 x its width floats.
CUDA_DRAW_ROWS_PER_CHUNK = 2**18


def importance_log_weights(model, x: torch.Tensor, num_samples: int, q: Normal | None = None,
                           chunk: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """``log p(x, z_k) - log q(z_k | x)`` for ``num_samples`` draws ``z_k ~ q`` per row, shape ``(K, B)``, without
    gradients. Their mean over draws estimates the ELBO, their log-mean-exp the IWAE bound (:func:`iwae_bound`): one
    set of draws gives both.

    ``model`` exposes ``encode``, ``log_normaliser`` and ``log_joint_minus_q``; ``q`` defaults to the encoder's.
    Draws are taken ``chunk`` at a time (default: :data:`DRAW_ROWS_PER_CHUNK` draws x rows, on CUDA
    :data:`CUDA_DRAW_ROWS_PER_CHUNK`), and the likelihood's normaliser (constant in z) is computed once for all of them.
    """
    bound = CUDA_DRAW_ROWS_PER_CHUNK if x.is_cuda else DRAW_ROWS_PER_CHUNK
    chunk = chunk or max(1, bound // max(1, x.shape[0]))
    with torch.no_grad():
        q = model.encode(x) if q is None else q
        normaliser = model.log_normaliser(x)
        parts = []
        for start in range(0, num_samples, chunk):
            z = _rsample(q, min(chunk, num_samples - start), generator)
            parts.append(model.log_joint_minus_q(z, x, q, normaliser))
        return torch.cat(parts)


def log_mean_exp(log_weights: torch.Tensor) -> torch.Tensor:
    """``log (1/K) sum_k exp(w_k)`` over the first dimension: the IWAE bound of log-weights ``(K, B)``, per row."""
    return torch.logsumexp(log_weights, 0) - math.log(log_weights.shape[0])


def _rsample(q: Normal, num_samples: int | None, generator: torch.Generator | None) -> torch.Tensor:
    """``num_samples`` reparameterised draws from a per-row diagonal Gaussian ``q``, shape ``(K, *q.batch_shape)``;
    ``None``: one draw, shape ``q.batch_shape``."""
    shape = q.loc.shape if num_samples is None else (num_samples, *q.loc.shape)
    noise = torch.randn(shape, generator=generator, device=q.loc.device, dtype=q.loc.dtype)
    return q.loc + q.scale * noise


@dataclass(frozen=True)
class AmortizationGaps:
    """The inference gap of an amortized model on a set of rows, per datum (Cremer, Li & Duvenaud 2018).

    Attributes:
        elbo: L[q], the ELBO with the encoder's q(z | x).
        refined_elbo: L[q*], the ELBO after refining each row's q by gradient steps with the decoder frozen.
        log_marginal: log p̂(x), an IWAE estimate with q* as the proposal.
        amortization_gap: ``refined_elbo - elbo`` (>= 0 up to Monte-Carlo noise): what one shared encoder costs.
        approximation_gap: ``log_marginal - refined_elbo``: what the Gaussian family itself costs.
    """

    elbo: float
    refined_elbo: float
    log_marginal: float
    amortization_gap: float
    approximation_gap: float


def amortization_gaps(model, x: torch.Tensor, *, refine_steps: int = 50, lr: float = 0.05, num_samples: int = 8,
                      eval_samples: int = 64, log_marginal_samples: int = 256, seed: int = 0) -> AmortizationGaps:
    """Measure L[q], L[q*] and log p̂(x) on rows ``x`` without changing any model parameter.

    q* starts at the encoder's output and takes ``refine_steps`` Adam steps on each row's own mean and log-SD,
    maximising that row's ELBO (``num_samples`` draws per step); gradients reach only those per-row parameters.
    Both ELBOs are evaluated with the same ``eval_samples`` standard-normal draws, so their difference carries
    little Monte-Carlo noise.
    """
    generator = torch.Generator(device=x.device).manual_seed(seed)
    with torch.no_grad():
        q = model.encode(x)
        normaliser = model.log_normaliser(x)  # constant in q: once, not in every refinement step
        loc, log_scale = q.loc.detach().clone(), q.scale.detach().log().clone()
        eps = torch.randn((eval_samples, *loc.shape), generator=generator, device=x.device, dtype=x.dtype)
    loc.requires_grad_(True)
    log_scale.requires_grad_(True)
    optimizer = torch.optim.Adam([loc, log_scale], lr=lr)
    with torch.enable_grad():
        for _ in range(refine_steps):
            noise = torch.randn((num_samples, *loc.shape), generator=generator, device=x.device, dtype=x.dtype)
            loss = -_elbo_rows(model, x, loc, log_scale, noise, normaliser).sum()
            loc.grad, log_scale.grad = torch.autograd.grad(loss, [loc, log_scale])
            optimizer.step()
    with torch.no_grad():
        elbo = _elbo_rows(model, x, q.loc, q.scale.log(), eps, normaliser).mean()
        refined = _elbo_rows(model, x, loc, log_scale, eps, normaliser).mean()
        q_star = Normal(loc.detach(), log_scale.detach().exp(), validate_args=False)
        log_marginal = iwae_bound(model, x, log_marginal_samples, q=q_star).mean()
    elbo, refined, log_marginal = float(elbo), float(refined), float(log_marginal)
    return AmortizationGaps(elbo, refined, log_marginal, refined - elbo, log_marginal - refined)


def _elbo_rows(model, x, loc, log_scale, noise, normaliser) -> torch.Tensor:
    """Per-row ELBO of q = N(loc, exp(log_scale)) from standard-normal ``noise`` ``(K, B, d)``; shape ``(B,)``."""
    q = Normal(loc, log_scale.exp(), validate_args=False)
    z = loc + log_scale.exp() * noise
    return model.log_likelihood(z, x, normaliser).mean(0) - model.kl_to_prior(q).sum(-1)


@dataclass(frozen=True)
class CollapseStatistics:
    """Posterior-collapse measures of an encoder on a set of rows.

    Attributes:
        kl_per_dim: mean over rows of KL(q(z_d | x) || p(z_d)) per latent dimension (nats); ~0 for a collapsed one.
        active_units: number of dimensions whose encoder mean varies across rows, ``Var_x E_q[z_d | x] > threshold``.
        posterior_sd_mean: mean over rows and dimensions of the encoder's SD (1 = the prior's, for collapsed units).
    """

    kl_per_dim: torch.Tensor
    active_units: int
    posterior_sd_mean: float


def collapse_statistics(model, x: torch.Tensor, threshold: float = 0.01, q: Normal | None = None
                        ) -> CollapseStatistics:
    """KL per latent dimension, active units (Burda et al. 2016) and the mean posterior SD on rows ``x``; ``q``: the
    encoder's output on them where the caller has it."""
    with torch.no_grad():
        q = model.encode(x) if q is None else q
        kl = model.kl_to_prior(q).mean(0).cpu()
        activity = q.loc.var(0, unbiased=True) if x.shape[0] > 1 else torch.zeros_like(q.loc[0])
        return CollapseStatistics(kl, int((activity > threshold).sum()), float(q.scale.mean()))
