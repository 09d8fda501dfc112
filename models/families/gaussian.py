"""Gaussian families: mean-field, full-rank (Cholesky factor) and low-rank-plus-diagonal."""

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
)
from torch.nn import functional as F

from models.families.base import (
    VariationalFamily,
    _is_diagonal_normal,
    initial_loc,
    inverse_softplus,
    positive_scale,
)
from models.families.gaussian_kl import _prior_terms, diagonal_gaussian_kl, full_rank_gaussian_kl, low_rank_gaussian_kl

__all__ = ["MeanFieldGaussian", "FullRankGaussian", "LowRankGaussian", "diagonal_gaussian_kl", "full_rank_gaussian_kl",
           "low_rank_gaussian_kl"]


def _standard_normal_log_density(noise: torch.Tensor) -> torch.Tensor:
    """``sum_i log N(noise_i | 0, 1)`` over the last dimension."""
    return -0.5 * noise.square().sum(-1) - 0.5 * noise.shape[-1] * math.log(2 * math.pi)


def _refresh_identity_map(family, incompatible_keys=None) -> None:
    """Whether ``family``'s preconditioning map is the identity (a module-level function, so that a pickled family
    pickles its hook by name)."""
    with torch.no_grad():
        family._identity_map = bool((family.precond_shift == 0).all() and (family.precond_scale == 1).all())


def _refresh_diagonal_map(family, incompatible_keys=None) -> None:
    """Whether a full-rank ``family``'s dense preconditioning map is diagonal (a module-level function, so that a
    pickled family pickles its hook by name)."""
    with torch.no_grad():
        family._diagonal_map = bool((family.precond_tril.tril(-1) == 0).all())


class MeanFieldGaussian(VariationalFamily):
    """Fully factorised Gaussian ``q(z) = prod_i N(z_i | loc_i, scale_i)``, scale via softplus."""

    symmetric = True

    def __init__(self, dim: int, init_scale: float = 0.1, init_loc: torch.Tensor | None = None):
        super().__init__(dim)
        self.loc = nn.Parameter(initial_loc(dim, init_loc))
        self.scale_unconstrained = nn.Parameter(torch.full((dim,), inverse_softplus(positive_scale(init_scale))))
        #: no preconditioning (shift 0, scale 1): location and scale are the parameters themselves, and a training
        #: step skips the map's three operations (and their backward) each time it reads them. Kept in step with the
        #: buffers by :meth:`precondition` and by every ``load_state_dict``.
        self._identity_map = True
        self.register_load_state_dict_post_hook(_refresh_identity_map)

    def precondition(self, shift, scale, scale_tril=None) -> MeanFieldGaussian:
        super().precondition(shift, scale, scale_tril)
        _refresh_identity_map(self)
        return self

    def _loc(self) -> torch.Tensor:
        return self.loc if getattr(self, "_identity_map", False) else super()._loc()

    @property
    def scale(self) -> torch.Tensor:
        scale = F.softplus(self.scale_unconstrained)
        return scale if getattr(self, "_identity_map", False) else self.precond_scale * scale

    def distribution(self) -> Distribution:
        return Independent(Normal(self._loc(), self.scale, validate_args=False), 1, validate_args=False)

    @property
    def mean(self) -> torch.Tensor:
        """The location (what ``distribution().mean`` returns, without building the distribution)."""
        return self._loc()

    @property
    def stddev(self) -> torch.Tensor:
        """The scale (what ``distribution().stddev`` returns)."""
        return self.scale

    def transform_noise(self, noise: torch.Tensor) -> torch.Tensor:
        """Map standard-normal noise ``(..., dim)`` to draws from q (the reparameterisation itself)."""
        return torch.addcmul(self._loc(), self.scale, noise)

    def rsample_and_kl(self, num_particles: int, prior: Distribution, antithetic: bool = False
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Draws and the analytic KL to a diagonal Gaussian prior from one evaluation of q's location and scale
        (the same draws as :meth:`rsample`: ``loc + scale * noise``)."""
        if not _is_diagonal_normal(prior):
            return super().rsample_and_kl(num_particles, prior, antithetic)
        loc, scale = self._loc(), self.scale
        z = torch.addcmul(loc, scale, self._noise(num_particles, antithetic, None))  # loc + scale * noise, fused
        return z, diagonal_gaussian_kl(loc, scale, *_prior_terms(prior))

    def rsample_with_log_prob(self, num_particles: int, antithetic: bool = False,
                              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Draws ``loc + scale * eps`` and ``log q = sum log N(eps | 0, 1) - sum log scale``: the density of the
        draws, read from the noise that made them (no solve; the identity holds for every parameter value, so
        its gradient is that of ``log_prob(z)``)."""
        noise = self._noise(num_particles, antithetic, generator)
        scale = self.scale
        return torch.addcmul(self._loc(), scale, noise), _standard_normal_log_density(noise) - scale.log().sum()

    def _unit_scale(self) -> None:
        self.scale_unconstrained.fill_(inverse_softplus(1.0))


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
        self.loc = nn.Parameter(initial_loc(dim, init_loc))
        self.scale_diag_unconstrained = nn.Parameter(torch.full((dim,), inverse_softplus(positive_scale(init_scale))))
        rows, cols = torch.tril_indices(dim, dim, offset=-1)
        self.register_buffer("_rows", rows, persistent=False)
        self.register_buffer("_cols", cols, persistent=False)
        self.scale_offdiag = nn.Parameter(torch.zeros(rows.numel()))
        #: the preconditioning map is diagonal (no ``scale_tril`` given, or none at all): it scales rows, and the
        #: family skips the ``D x D`` product with it (``O(D^3)``, most of a step's work at a few hundred latents).
        #: Kept in step with the buffers by :meth:`precondition` and by every ``load_state_dict``.
        self._diagonal_map = True
        self.register_load_state_dict_post_hook(_refresh_diagonal_map)

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
        _refresh_diagonal_map(self)
        return self

    def _loc(self) -> torch.Tensor:
        if getattr(self, "_diagonal_map", False):
            return torch.addcmul(self.precond_shift, self.precond_tril.diagonal() * self.precond_scale, self.loc)
        return self.precond_shift + self.precond_tril @ (self.precond_scale * self.loc)

    @property
    def scale_tril(self) -> torch.Tensor:
        tril = torch.diag_embed(F.softplus(self.scale_diag_unconstrained))
        tril = tril.index_put((self._rows, self._cols), self.scale_offdiag)
        if getattr(self, "_diagonal_map", False):
            return (self.precond_tril.diagonal() * self.precond_scale).unsqueeze(-1) * tril
        return self.precond_tril @ (self.precond_scale.unsqueeze(-1) * tril)

    def distribution(self) -> Distribution:
        return MultivariateNormal(self._loc(), scale_tril=self.scale_tril, validate_args=False)

    def transform_noise(self, noise: torch.Tensor) -> torch.Tensor:
        return self._loc() + noise @ self.scale_tril.T

    def rsample_and_kl(self, num_particles: int, prior: Distribution, antithetic: bool = False
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Draws and the analytic KL to a diagonal Gaussian prior from one evaluation of q's location and Cholesky
        factor (the same draws as :meth:`rsample`: ``loc + L noise``)."""
        if not _is_diagonal_normal(prior):
            return super().rsample_and_kl(num_particles, prior, antithetic)
        loc, tril = self._loc(), self.scale_tril
        z = loc + self._noise(num_particles, antithetic, None) @ tril.T
        return z, full_rank_gaussian_kl(loc, tril, *_prior_terms(prior))

    def kl_to(self, prior: Distribution) -> torch.Tensor:
        if _is_diagonal_normal(prior):
            return full_rank_gaussian_kl(self._loc(), self.scale_tril, *_prior_terms(prior))
        return super().kl_to(prior)

    def rsample_with_log_prob(self, num_particles: int, antithetic: bool = False,
                              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Draws ``loc + L eps`` and ``log q = sum log N(eps | 0, 1) - sum log diag L`` from one evaluation of the
        Cholesky factor ``L`` (``MultivariateNormal.log_prob`` would rebuild it and solve with it)."""
        noise = self._noise(num_particles, antithetic, generator)
        tril = self.scale_tril
        log_det = tril.diagonal(dim1=-2, dim2=-1).log().sum()
        return self._loc() + noise @ tril.T, _standard_normal_log_density(noise) - log_det

    def _unit_scale(self) -> None:
        self.scale_diag_unconstrained.fill_(inverse_softplus(1.0))
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
        self.loc = nn.Parameter(initial_loc(dim, init_loc))
        self.diag_unconstrained = nn.Parameter(torch.full((dim,), inverse_softplus(positive_scale(init_scale))))
        generator = torch.Generator().manual_seed(seed)
        self.cov_factor = nn.Parameter(0.1 * init_scale * torch.randn(dim, rank, generator=generator) / math.sqrt(rank))

    def _factor_and_diag_scale(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``W`` and ``d`` of the covariance ``W W^T + diag(d^2)`` in z space (the preconditioner's scale applied)."""
        return (self.precond_scale.unsqueeze(-1) * self.cov_factor,
                self.precond_scale * F.softplus(self.diag_unconstrained))

    def distribution(self) -> Distribution:
        factor, diag = self._factor_and_diag_scale()
        return LowRankMultivariateNormal(self._loc(), factor, diag * diag, validate_args=False)

    def kl_to(self, prior: Distribution) -> torch.Tensor:
        """To a diagonal Gaussian prior in ``O(D rank^2)`` (:func:`low_rank_gaussian_kl`), with no ``D x D`` matrix."""
        if _is_diagonal_normal(prior):
            return low_rank_gaussian_kl(self._loc(), *self._factor_and_diag_scale(), *_prior_terms(prior))
        return super().kl_to(prior)

    @property
    def noise_dim(self) -> int:
        return self.dim + self.rank

    def transform_noise(self, noise: torch.Tensor) -> torch.Tensor:
        """Standard-normal noise of shape ``(..., dim + rank)``: the first ``rank`` columns drive ``W``."""
        eps_w, eps_d = noise[..., : self.rank], noise[..., self.rank :]
        s = self.precond_scale
        return self._loc() + s * (eps_w @ self.cov_factor.T + F.softplus(self.diag_unconstrained) * eps_d)

    def _unit_scale(self) -> None:
        self.diag_unconstrained.fill_(inverse_softplus(1.0))
        self.cov_factor.mul_(10.0)  # still small next to the unit diagonal, large enough to move
