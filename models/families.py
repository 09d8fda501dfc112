"""Variational families q(z) over a flat vector of unconstrained latent variables.

A family is a small ``nn.Module`` with one job: hold variational parameters and expose the distribution they define.
Subclasses override only :meth:`VariationalFamily.distribution` (template method, as Pyro's guides do); sampling with
reparameterisation, log-density, entropy and KL come from the ``torch.distributions`` object it returns.

Families: mean-field Gaussian, full-rank Gaussian (Cholesky factor), low-rank-plus-diagonal Gaussian, and a
normalizing flow (a zuko neural spline flow on top of a learned elementwise affine map). docs/families.md says when to
use which.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributions import (
    AffineTransform,
    Distribution,
    Independent,
    LowRankMultivariateNormal,
    MultivariateNormal,
    Normal,
    TransformedDistribution,
    kl_divergence,
)
from torch.nn import functional as F

__all__ = [
    "VariationalFamily",
    "MeanFieldGaussian",
    "FullRankGaussian",
    "LowRankGaussian",
    "NormalizingFlow",
    "make_family",
    "FAMILIES",
]

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
        """Location of q in z space."""
        return self.precond_shift + self.precond_scale * self.loc

    def distribution(self) -> Distribution:
        """The current q(z), with ``event_shape == (dim,)``."""
        raise NotImplementedError

    #: q is symmetric about its mean, so ``2 * mean - z`` is also a draw from q (used for antithetic sampling).
    symmetric: bool = False

    def rsample(self, num_particles: int, antithetic: bool = False) -> torch.Tensor:
        """Reparameterised draws of shape ``(num_particles, dim)``.

        With ``antithetic`` (symmetric families only), draws come in mirrored pairs ``z, 2 * mean - z``: each draw is
        still marginally from q, so estimates stay unbiased, while the parts of the gradient that are odd in the
        noise cancel within a pair (Geffner & Domke 2020 discuss such control variates for VI). For a Gaussian
        likelihood this removes the minibatch-gradient noise from the scale gradients entirely.
        """
        dist = self.distribution()
        if not antithetic or num_particles < 2:
            return dist.rsample((num_particles,))
        if not self.symmetric:
            raise ValueError(f"{type(self).__name__} is not symmetric about its mean; antithetic draws need one that is")
        half = dist.rsample(((num_particles + 1) // 2,))
        mirrored = 2.0 * dist.mean - half
        return torch.cat([half, mirrored])[:num_particles]

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
            prior = MultivariateNormal(base.loc.expand(self.dim), scale_tril=scale_tril)
        return kl_divergence(q, prior)

    @property
    def mean(self) -> torch.Tensor:
        return self.distribution().mean

    @property
    def stddev(self) -> torch.Tensor:
        return self.distribution().stddev

    def _sampled_moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and SD from ``MOMENT_SAMPLES`` draws with a fixed seed (common random numbers across calls)."""
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            z = self.distribution().sample((MOMENT_SAMPLES,))
        return z.mean(0), z.std(0)


def _is_diagonal_normal(dist: Distribution) -> bool:
    return isinstance(dist, Independent) and isinstance(dist.base_dist, Normal) and dist.reinterpreted_batch_ndims == 1


class MeanFieldGaussian(VariationalFamily):
    """Fully factorised Gaussian ``q(z) = prod_i N(z_i | loc_i, scale_i)``, scale via softplus."""

    symmetric = True

    def __init__(self, dim: int, init_scale: float = 0.1, init_loc: torch.Tensor | None = None):
        super().__init__(dim)
        self.loc = nn.Parameter(_initial_loc(dim, init_loc))
        self.scale_unconstrained = nn.Parameter(torch.full((dim,), _inverse_softplus(_positive(init_scale))))

    @property
    def scale(self) -> torch.Tensor:
        return self.precond_scale * F.softplus(self.scale_unconstrained)

    def distribution(self) -> Distribution:
        return Independent(Normal(self._loc(), self.scale, validate_args=False), 1, validate_args=False)

    def transform_noise(self, noise: torch.Tensor) -> torch.Tensor:
        """Map standard-normal noise ``(..., dim)`` to draws from q (the reparameterisation itself)."""
        return self._loc() + self.scale * noise

    def _unit_scale(self) -> None:
        self.scale_unconstrained.fill_(_inverse_softplus(1.0))


class FullRankGaussian(VariationalFamily):
    """Gaussian with a full covariance ``L L^T``: ``L`` lower-triangular, its diagonal positive through softplus.

    Captures every linear correlation of the posterior (the mean-field family cannot), at ``D (D + 1) / 2`` scale
    parameters: the right choice up to a few hundred latent dimensions.
    """

    symmetric = True

    def __init__(self, dim: int, init_scale: float = 0.1, init_loc: torch.Tensor | None = None):
        super().__init__(dim)
        # A dense preconditioner z = shift + T u (T lower-triangular; identity unless set by ``precondition``).
        self.register_buffer("precond_tril", torch.eye(dim))
        self.loc = nn.Parameter(_initial_loc(dim, init_loc))
        self.scale_diag_unconstrained = nn.Parameter(torch.full((dim,), _inverse_softplus(_positive(init_scale))))
        rows, cols = torch.tril_indices(dim, dim, offset=-1)
        self.register_buffer("_rows", rows, persistent=False)
        self.register_buffer("_cols", cols, persistent=False)
        self.scale_offdiag = nn.Parameter(torch.zeros(rows.numel()))

    def precondition(self, shift, scale, scale_tril=None) -> FullRankGaussian:
        """As the base class; with ``scale_tril`` the map is dense (``z = shift + scale_tril @ u``), which whitens a
        correlated posterior: the full-rank family is closed under any affine map, so nothing is lost."""
        super().precondition(shift, scale)
        if scale_tril is None:
            tril = torch.diag(self.precond_scale)
        else:
            tril = torch.as_tensor(scale_tril, dtype=torch.float32)
        if tril.shape != (self.dim, self.dim) or not bool(torch.isfinite(tril).all()):
            raise ValueError(f"scale_tril must be a finite ({self.dim}, {self.dim}) matrix")
        with torch.no_grad():
            self.precond_tril.copy_(torch.tril(tril))
            self.precond_scale.fill_(1.0)  # the dense map carries the scales
        return self

    def _loc(self) -> torch.Tensor:
        return self.precond_shift + self.precond_tril @ (self.precond_scale * self.loc)

    @property
    def scale_tril(self) -> torch.Tensor:
        tril = torch.diag_embed(F.softplus(self.scale_diag_unconstrained))
        tril = self.precond_scale.unsqueeze(-1) * tril.index_put((self._rows, self._cols), self.scale_offdiag)
        return self.precond_tril @ tril

    def distribution(self) -> Distribution:
        return MultivariateNormal(self._loc(), scale_tril=self.scale_tril, validate_args=False)

    def transform_noise(self, noise: torch.Tensor) -> torch.Tensor:
        return self._loc() + noise @ self.scale_tril.T

    def _unit_scale(self) -> None:
        self.scale_diag_unconstrained.fill_(_inverse_softplus(1.0))
        self.scale_offdiag.zero_()


class LowRankGaussian(VariationalFamily):
    """Gaussian with covariance ``W W^T + diag(d^2)``, ``W`` of shape ``(D, rank)``: the correlations along a few
    directions at ``D (rank + 2)`` parameters, for models too large for the full-rank family.

    ``W`` starts at small random values: at ``W = 0`` its gradient is zero and it would never move.
    """

    symmetric = True

    def __init__(self, dim: int, init_scale: float = 0.1, rank: int = 2, init_loc: torch.Tensor | None = None,
                 seed: int = 0):
        super().__init__(dim)
        if not 1 <= rank <= dim:
            raise ValueError(f"rank must be between 1 and the latent dimension {dim}, got {rank}")
        self.rank = int(rank)
        self.loc = nn.Parameter(_initial_loc(dim, init_loc))
        self.diag_unconstrained = nn.Parameter(torch.full((dim,), _inverse_softplus(_positive(init_scale))))
        generator = torch.Generator().manual_seed(seed)
        self.cov_factor = nn.Parameter(0.1 * init_scale * torch.randn(dim, rank, generator=generator) / math.sqrt(rank))

    def distribution(self) -> Distribution:
        diag = self.precond_scale * F.softplus(self.diag_unconstrained)
        factor = self.precond_scale.unsqueeze(-1) * self.cov_factor
        return LowRankMultivariateNormal(self._loc(), factor, diag * diag, validate_args=False)

    @property
    def noise_dim(self) -> int:
        return self.dim + self.rank

    def transform_noise(self, noise: torch.Tensor) -> torch.Tensor:
        """Standard-normal noise of shape ``(..., dim + rank)``: the first ``rank`` columns drive ``W``."""
        eps_w, eps_d = noise[..., : self.rank], noise[..., self.rank :]
        s = self.precond_scale
        return self._loc() + s * (eps_w @ self.cov_factor.T + F.softplus(self.diag_unconstrained) * eps_d)

    def _unit_scale(self) -> None:
        self.diag_unconstrained.fill_(_inverse_softplus(1.0))
        self.cov_factor.mul_(10.0)  # still small next to the unit diagonal, large enough to move


class NormalizingFlow(VariationalFamily):
    """A normalizing flow: ``z = loc + scale * f(u)``, ``u ~ N(0, I)``, ``f`` a zuko neural spline flow.

    The spline flow (coupling layers, so sampling and density are both one pass) captures skewness, heavy-ish tails
    and curved dependence; the learned elementwise affine map in front of it puts the flow's working range where the
    posterior is, so the flow only has to learn the shape. With the flow at identity this is the mean-field family.

    Args:
        transforms: number of spline coupling layers.
        hidden_features: hidden widths of each layer's conditioner network.
        bins: spline bins per dimension.
    """

    def __init__(self, dim: int, init_scale: float = 0.1, transforms: int = 3,
                 hidden_features: tuple[int, ...] | list[int] = (32, 32), bins: int = 8,
                 init_loc: torch.Tensor | None = None):
        super().__init__(dim)
        import zuko

        self.loc = nn.Parameter(_initial_loc(dim, init_loc))
        self.scale_unconstrained = nn.Parameter(torch.full((dim,), _inverse_softplus(_positive(init_scale))))
        # Coupling (passes=2) keeps both directions one network pass; a one-dimensional latent has nothing to couple.
        passes = 2 if dim > 1 else None
        self.flow = zuko.flows.NSF(features=dim, context=0, transforms=transforms, bins=bins,
                                   hidden_features=tuple(hidden_features), passes=passes)

    def distribution(self) -> Distribution:
        affine = AffineTransform(self._loc(), self.precond_scale * F.softplus(self.scale_unconstrained), event_dim=1)
        return TransformedDistribution(self.flow(), [affine], validate_args=False)

    def _unit_scale(self) -> None:
        self.scale_unconstrained.fill_(_inverse_softplus(1.0))

    def transform_noise(self, noise: torch.Tensor) -> torch.Tensor:
        flow = self.flow()  # zuko: x = transform.inv(u) for base noise u
        return self._loc() + self.precond_scale * F.softplus(self.scale_unconstrained) * flow.transform.inv(noise)

    @property
    def mean(self) -> torch.Tensor:
        return self._sampled_moments()[0]

    @property
    def stddev(self) -> torch.Tensor:
        return self._sampled_moments()[1]


def _positive(value: float) -> float:
    if not value > 0:
        raise ValueError(f"init_scale must be positive, got {value}")
    return float(value)


def _initial_loc(dim: int, init_loc) -> torch.Tensor:
    loc = torch.zeros(dim) if init_loc is None else torch.as_tensor(init_loc, dtype=torch.float32).clone()
    if loc.shape != (dim,):
        raise ValueError(f"init_loc must have shape ({dim},), got {tuple(loc.shape)}")
    return loc


#: Families selectable by ``guide.family`` in config.
FAMILIES: dict[str, type[VariationalFamily]] = {
    "mean_field": MeanFieldGaussian,
    "full_rank": FullRankGaussian,
    "low_rank": LowRankGaussian,
    "flow": NormalizingFlow,
}


def make_family(name: str, dim: int, **options) -> VariationalFamily:
    """Build a family by its config name, e.g. ``make_family("low_rank", dim=5, rank=2, init_scale=0.1)``."""
    if name not in FAMILIES:
        raise ValueError(f"unknown variational family {name!r}; allowed: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[name](dim, **options)
