"""Models with global latent variables in one flat unconstrained vector ``z`` (regression, classification, BNNs).

A model lays its parameters out as named :class:`LatentBlock` slices of ``z``; positive parameters are stored on the
log scale (:data:`models.priors.TO_POSITIVE`) and their log-Jacobian enters the prior, so any
:class:`~models.families.VariationalFamily` over ``R^D`` can approximate the posterior. Every such model answers:

- ``log_likelihood(z, x, y) -> (S, B)`` and ``log_prior(z) -> (S,)`` for the ELBO and importance diagnostics;
- ``predictive(z, x)``: ``p(y | x, z)`` as a torch distribution with batch shape ``(S, B)``;
- ``gaussian_prior()``: the prior as one diagonal Gaussian when it is one (analytic KL), else None;
- ``task``: ``"regression"`` or ``"classification"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.distributions import Distribution, Normal

from models.priors import TO_POSITIVE, Flat, without_sample_checks

__all__ = ["GlobalLatentModel", "LatentBlock", "gaussian_log_likelihood", "gaussian_predictive",
           "learned_noise_log_likelihood", "move_distribution"]


@dataclass(frozen=True)
class LatentBlock:
    """One named latent parameter: its slice of the flat vector, its size, and whether it is constrained positive."""

    name: str
    start: int
    size: int
    positive: bool = False

    @property
    def stop(self) -> int:
        return self.start + self.size


class GlobalLatentModel:
    """Shared behaviour of the flat-``z`` models: the latent layout and the posterior summary."""

    kind: str = ""
    task: str = ""
    blocks: tuple[LatentBlock, ...] = ()
    #: The model samples pre-activations from q's marginals itself (local reparameterisation) when True.
    local_reparameterization: bool = False

    @property
    def latent_dim(self) -> int:
        return self.blocks[-1].stop

    def initial_loc(self) -> torch.Tensor | None:
        """Where q's mean starts, or None for zeros (networks need random weights to break their symmetry)."""
        return None

    def posterior_summary(self, family, num_samples: int = 4000, seed: int = 0) -> dict:
        """Posterior mean and SD of every latent parameter, on its constrained scale.

        Unconstrained blocks use the family's exact marginal moments; positive blocks use ``num_samples``
        Monte-Carlo draws with a fixed seed.
        """
        with torch.no_grad():
            loc, sd = family.mean.detach().cpu(), family.stddev.detach().cpu()
            draws = None
            summary = {}
            for block in self.blocks:
                if not block.positive:
                    mean, std = loc[block.start : block.stop], sd[block.start : block.stop]
                else:
                    if draws is None:
                        generator = torch.Generator(device=family.precond_shift.device).manual_seed(seed)
                        draws = family.rsample(num_samples, generator=generator).detach().cpu()
                    values = TO_POSITIVE(draws[:, block.start : block.stop])
                    mean, std = values.mean(0), values.std(0)
                summary[block.name] = {"mean": mean.tolist(), "sd": std.tolist()}
        return summary


_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def gaussian_log_likelihood(y: torch.Tensor, mean: torch.Tensor, scale: float | torch.Tensor,
                            log_scale: torch.Tensor | None = None) -> torch.Tensor:
    """``Normal(mean, scale).log_prob(y)`` for ``mean`` of shape ``(S, B)`` and a noise ``scale`` that is a number or
    a tensor broadcastable to it (``(S, 1)``: one per draw), in closed form.

    The same density as torch's (``tests/models`` checks it against ``predictive(z, x).log_prob(y)``), but on the
    training step's hot path: ``Normal(mean, scale)`` would broadcast ``scale`` to ``(S, B)`` and take its log once per
    row and draw, which the profile (docs/benchmarks.md) showed to be the costliest operation of a step. Here the log
    is taken once per draw and the step builds no distribution object. ``log_scale``: ``log scale`` where the caller
    holds it (a learned noise scale is the exponential of its latent, which is then its log: no ``log(exp(u))``).
    """
    if log_scale is None:
        log_scale = math.log(scale) if isinstance(scale, float) else scale.log()
    return -0.5 * ((y - mean) / scale).square() - (log_scale + _HALF_LOG_2PI)


def learned_noise_log_likelihood(y: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """:func:`gaussian_log_likelihood` with a learned noise scale given by its latent ``u = log scale`` (``(S, 1)``):
    the scale is :data:`~models.priors.TO_POSITIVE` of ``u``, ``exp(u)``, so its log is ``u`` itself, not
    ``log(exp(u))``."""
    return gaussian_log_likelihood(y, mean, TO_POSITIVE(log_scale), log_scale=log_scale)


def gaussian_predictive(mean: torch.Tensor, scale: float | torch.Tensor) -> Normal:
    """``p(y | x, z)`` as a torch ``Normal`` with batch shape ``(S, B)``, for a noise ``scale`` that is a number or one
    per draw (``(S, 1)``): the object :func:`gaussian_log_likelihood` is the density of."""
    scale = scale.expand_as(mean) if torch.is_tensor(scale) else mean.new_tensor(scale).expand_as(mean)
    return Normal(mean, scale, validate_args=False)


def move_distribution(dist: Distribution, device: torch.device | str) -> Distribution:
    """The same distribution with its parameters on ``device``."""
    if isinstance(dist, Flat):
        return dist
    params = {k: getattr(dist, k).to(device) for k in dist.arg_constraints if hasattr(dist, k)}
    moved = type(dist)(**params)
    return without_sample_checks(moved) if not dist._validate_args else moved
