"""The variational family base class: a distribution over a flat vector of unconstrained latents, learned by SVI.

A family holds its variational parameters and defines two things, as Pyro's ``AutoContinuous`` guides do:
:meth:`VariationalFamily.transform_noise`, the reparameterisation (standard-normal noise -> a draw from q), which
every sampling path goes through; and :meth:`VariationalFamily.distribution`, the same q as a ``torch.distributions``
object, for log-density, entropy and KL. Tests check that the two agree for every family.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributions import (
    Distribution,
    Independent,
    LowRankMultivariateNormal,
    MultivariateNormal,
    Normal,
    kl_divergence,
)

__all__ = ["VariationalFamily", "MOMENT_SAMPLES"]

#: Draws used for moments that a family has no closed form for (flows), with a fixed seed so they are repeatable.
MOMENT_SAMPLES = 4096


def _inverse_softplus(x: float) -> float:
    return x + math.log(-math.expm1(-x))


class VariationalFamily(nn.Module):
    """Base class: a distribution over ``R^dim`` whose parameters are learned by SVI."""

    def __init__(self, dim: int):
        super().__init__()
        if dim < 1:
            raise ValueError(f"a variational family needs at least one latent dimension, got dim={dim}")
        self.dim = int(dim)
        # A fixed diagonal map z = shift + scale * u (identity unless :meth:`precondition` sets it): the variational
        # parameters live in u, where posterior scales are about one, so Adam's steps suit every coordinate alike.
        self.register_buffer("precond_shift", torch.zeros(self.dim))
        self.register_buffer("precond_scale", torch.ones(self.dim))

    def precondition(self, shift: torch.Tensor, scale: torch.Tensor, scale_tril: torch.Tensor | None = None
                     ) -> VariationalFamily:
        """Centre q at ``shift`` and measure its parameters in units of ``scale`` (e.g. a Laplace approximation's
        mode and marginal SDs). A diagonal map keeps every family in its class: a mean-field q stays mean-field.
        ``scale_tril`` (a dense map) is used only by families closed under it (full rank); others ignore it."""
        shift, scale = torch.as_tensor(shift, dtype=torch.float32), torch.as_tensor(scale, dtype=torch.float32)
        if shift.shape != (self.dim,) or scale.shape != (self.dim,):
            raise ValueError(f"shift and scale must have shape ({self.dim},), "
                             f"got {tuple(shift.shape)} and {tuple(scale.shape)}")
        if not bool((scale > 0).all() and torch.isfinite(scale).all() and torch.isfinite(shift).all()):
            raise ValueError("preconditioner scale must be positive and finite, and shift finite")
        with torch.no_grad():
            self.precond_shift.copy_(shift)
            self.precond_scale.copy_(scale)
            self.loc.zero_()
            self._unit_scale()
        return self

    def _unit_scale(self) -> None:
        """Set the scale parameters so that q has unit scale in preconditioned units (q starts at the Laplace
        Gaussian, or its diagonal for the factorised families)."""
        raise NotImplementedError

    def _loc(self) -> torch.Tensor:
        """Location of q in z space: ``shift + scale * loc`` (one fused operation)."""
        return torch.addcmul(self.precond_shift, self.precond_scale, self.loc)

    def distribution(self) -> Distribution:
        """The current q(z), with ``event_shape == (dim,)``."""
        raise NotImplementedError

    #: q is symmetric about its mean, so ``2 * mean - z`` is also a draw from q (used for antithetic sampling).
    symmetric: bool = False
    #: KL(q || diagonal Gaussian prior) has a closed form (:meth:`rsample_and_kl`). Where it has none, the ELBO
    #: estimates the KL from the draws and takes log q from :meth:`rsample_with_log_prob`.
    closed_form_kl: bool = True

    def rsample(self, num_particles: int, antithetic: bool = False,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Reparameterised draws of shape ``(num_particles, dim)``: standard-normal noise through
        :meth:`transform_noise`, the family's one definition of its reparameterisation.

        ``generator`` makes the draws reproducible without touching the global RNG (evaluation, the gate and
        monitoring pass their own); without one the global generator is used (training, seeded at its start).

        With ``antithetic`` (symmetric families only), draws come in mirrored pairs ``T(eps), T(-eps)``, that is
        ``z, 2 * mean - z``: each draw is still marginally from q, so estimates stay unbiased, while the parts of the
        gradient that are odd in the noise cancel within a pair (Geffner & Domke 2020 discuss such control variates
        for VI). For a Gaussian likelihood this removes the minibatch-gradient noise from the scale gradients.
        """
        return self.transform_noise(self._noise(num_particles, antithetic, generator))

    def _noise(self, num_particles: int, antithetic: bool, generator: torch.Generator | None) -> torch.Tensor:
        """Standard-normal noise ``(num_particles, noise_dim)``, in mirrored pairs when ``antithetic``."""
        if antithetic and num_particles > 1 and not self.symmetric:
            raise ValueError(
                f"{type(self).__name__} is not symmetric about its mean; antithetic draws need one that is")
        pairs = antithetic and num_particles > 1
        draws = (num_particles + 1) // 2 if pairs else num_particles
        like = self.precond_shift
        noise = torch.randn((draws, self.noise_dim), generator=generator, device=like.device, dtype=like.dtype)
        if pairs:
            noise = torch.cat([noise, -noise])[:num_particles]
        return noise

    def rsample_with_log_prob(self, num_particles: int, antithetic: bool = False,
                              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`rsample` draws and log q at each of them, ``(num_particles,)``: for the Monte-Carlo KL.
        Families whose density is cheap from the noise (the Gaussians) override it."""
        z = self.rsample(num_particles, antithetic=antithetic, generator=generator)
        return z, self.log_prob(z)

    def rsample_and_kl(self, num_particles: int, prior: Distribution, antithetic: bool = False
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What one ELBO step needs from q under a Gaussian prior: :meth:`rsample` draws and the analytic
        KL(q || prior), or None when torch has no closed form. Families whose parameters cost something to assemble
        (mean-field) override it to assemble them once for both."""
        z = self.rsample(num_particles, antithetic=antithetic)
        try:
            return z, self.kl_to(prior)
        except NotImplementedError:
            return z, None

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log q(z) for draws of shape ``(..., dim)``."""
        return self.distribution().log_prob(z)

    def transform_noise(self, noise: torch.Tensor) -> torch.Tensor:
        """Map standard-normal noise ``(..., noise_dim)`` to draws from q (the family's reparameterisation), so that a
        seeded ``torch.Generator`` gives reproducible draws on any device."""
        raise NotImplementedError

    @property
    def noise_dim(self) -> int:
        """Width of the standard-normal noise that :meth:`transform_noise` takes."""
        return self.dim

    def entropy(self) -> torch.Tensor:
        return self.distribution().entropy()

    def kl_to(self, prior: Distribution) -> torch.Tensor:
        """Analytic KL(q || prior); raises ``NotImplementedError`` where torch has no closed form."""
        q = self.distribution()
        if isinstance(q, (MultivariateNormal, LowRankMultivariateNormal)) and _is_diagonal_normal(prior):
            base = prior.base_dist
            scale_tril = torch.diag_embed(base.scale.expand(self.dim))
            prior = MultivariateNormal(base.loc.expand(self.dim), scale_tril=scale_tril, validate_args=False)
        return kl_divergence(q, prior)

    @property
    def mean(self) -> torch.Tensor:
        return self.distribution().mean

    @property
    def stddev(self) -> torch.Tensor:
        return self.distribution().stddev

    def _sampled_moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and SD from ``MOMENT_SAMPLES`` draws with a fixed seed (common random numbers across calls)."""
        generator = torch.Generator(device=self.precond_shift.device).manual_seed(0)
        with torch.no_grad():
            z = self.rsample(MOMENT_SAMPLES, generator=generator)
        return z.mean(0), z.std(0)


def _is_diagonal_normal(dist: Distribution) -> bool:
    return isinstance(dist, Independent) and isinstance(dist.base_dist, Normal) and dist.reinterpreted_batch_ndims == 1


def positive_scale(value: float) -> float:
    if not value > 0:
        raise ValueError(f"init_scale must be positive, got {value}")
    return float(value)


def initial_loc(dim: int, init_loc) -> torch.Tensor:
    loc = torch.zeros(dim) if init_loc is None else torch.as_tensor(init_loc, dtype=torch.float32).clone()
    if loc.shape != (dim,):
        raise ValueError(f"init_loc must have shape ({dim},), got {tuple(loc.shape)}")
    return loc




def inverse_softplus(x: float) -> float:
    """The unconstrained value whose softplus is ``x``."""
    return x + math.log(-math.expm1(-x))
