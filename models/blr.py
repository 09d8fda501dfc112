"""Bayesian linear regression, ``y ~ Normal(x @ weights + intercept, noise_scale)``.

Latent variables live in one flat unconstrained vector ``z = [weights (p), intercept (1), log noise_scale (0 or 1)]``
so that any :class:`~models.families.VariationalFamily` over ``R^D`` can approximate the posterior. The positive noise
scale is held as its log (:data:`models.priors.TO_POSITIVE`) and its log-Jacobian enters the prior.
"""

from __future__ import annotations

import torch
from torch.distributions import Distribution, Independent, Normal

from models.latent import (
    GlobalLatentModel,
    LatentBlock,
    gaussian_log_likelihood,
    gaussian_predictive,
    learned_noise_log_likelihood,
    move_distribution,
)
from models.priors import TO_POSITIVE, PriorDensity

__all__ = ["BayesianLinearRegression", "LatentBlock"]


class BayesianLinearRegression(GlobalLatentModel):
    """BLR with scalar priors on every weight, the intercept and (when learned) the noise scale.

    Args:
        num_features: number of feature columns ``p``.
        weight_prior: scalar prior applied independently to every weight.
        intercept_prior: scalar prior on the intercept.
        noise_scale: a fixed positive noise scale, or ``None`` to learn it.
        noise_prior: prior on the noise scale when it is learned (support: positive reals).
    """

    kind = "bayesian_linear_regression"
    task = "regression"

    def __init__(
        self,
        num_features: int,
        weight_prior: Distribution,
        intercept_prior: Distribution,
        noise_scale: float | None = None,
        noise_prior: Distribution | None = None,
        fit_intercept: bool = True,
    ):
        if num_features < 1:
            raise ValueError(f"num_features must be >= 1, got {num_features}")
        if (noise_scale is None) == (noise_prior is None):
            raise ValueError("give exactly one of noise_scale (fixed noise) or noise_prior (learned noise)")
        if noise_scale is not None and not noise_scale > 0:
            raise ValueError(f"a fixed noise_scale must be positive, got {noise_scale}")
        self.num_features = int(num_features)
        self.weight_prior = weight_prior
        self.intercept_prior = intercept_prior
        self.noise_scale = None if noise_scale is None else float(noise_scale)
        self.noise_prior = noise_prior
        self._densities()
        self.fit_intercept = bool(fit_intercept)
        blocks = [LatentBlock("weights", 0, self.num_features)]
        if self.fit_intercept:
            blocks.append(LatentBlock("intercept", self.num_features, 1))
        if self.learns_noise:
            blocks.append(LatentBlock("noise_scale", blocks[-1].stop, 1, positive=True))
        self.blocks: tuple[LatentBlock, ...] = tuple(blocks)
        self._gaussian_prior: Distribution | None = None

    @property
    def learns_noise(self) -> bool:
        return self.noise_scale is None

    @property
    def latent_dim(self) -> int:
        return self.blocks[-1].stop

    def to(self, device: torch.device | str) -> BayesianLinearRegression:
        """Move the prior parameters to ``device`` (the priors are rebuilt with moved tensors)."""
        self._gaussian_prior = None
        self.weight_prior = move_distribution(self.weight_prior, device)
        self.intercept_prior = move_distribution(self.intercept_prior, device)
        if self.noise_prior is not None:
            self.noise_prior = move_distribution(self.noise_prior, device)
        self._densities()
        return self

    def _densities(self) -> None:
        self._weight_density = PriorDensity(self.weight_prior)
        self._intercept_density = PriorDensity(self.intercept_prior)
        self._noise_density = None if self.noise_prior is None else PriorDensity(self.noise_prior)

    def unpack(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split draws ``(S, D)`` into constrained parameters: weights ``(S, p)``, intercept ``(S,)``, noise ``(S,)``."""
        p = self.num_features
        out = {"weights": z[..., :p]}
        out["intercept"] = z[..., p] if self.fit_intercept else z.new_zeros(z.shape[:-1])
        if self.learns_noise:
            out["noise_scale"] = TO_POSITIVE(z[..., -1])
        return out

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) in unconstrained space (prior density plus log-Jacobian), shape ``(S,)``."""
        p = self.num_features
        lp = self._weight_density.weights(z[..., :p])
        if self.fit_intercept:
            lp = lp + self._intercept_density.weights(z[..., p : p + 1])
        if self.learns_noise:
            lp = lp + self._noise_density.log_scale(z[..., -1])
        return lp

    def gaussian_prior(self) -> Distribution | None:
        """The prior over all of ``z`` as one diagonal Gaussian, when it is one (enables analytic KL); else None.

        Built once and cached (the ELBO asks for it every step); :meth:`to` clears the cache.
        """
        coefficient_priors = (self.weight_prior, self.intercept_prior) if self.fit_intercept else (self.weight_prior,)
        if self.learns_noise or not all(isinstance(p, Normal) for p in coefficient_priors):
            return None
        if self._gaussian_prior is None:
            p = self.num_features
            locs, scales = [self.weight_prior.loc.expand(p)], [self.weight_prior.scale.expand(p)]
            if self.fit_intercept:
                locs.append(self.intercept_prior.loc.reshape(1))
                scales.append(self.intercept_prior.scale.reshape(1))
            loc, scale = torch.cat(locs), torch.cat(scales)
            self._gaussian_prior = Independent(Normal(loc, scale, validate_args=False), 1, validate_args=False)
        return self._gaussian_prior

    def _mean(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The predictive mean ``(S, B)``: one matmul for every draw."""
        p = self.num_features
        if self.fit_intercept:
            return torch.addmm(z[:, p : p + 1], z[:, :p], x.T)
        return z[:, :p] @ x.T

    def _mean_and_scale(self, z: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, float | torch.Tensor]:
        """The predictive mean ``(S, B)`` and the noise scale: a number, or ``(S, 1)``."""
        return self._mean(z, x), TO_POSITIVE(z[:, -1:]) if self.learns_noise else self.noise_scale

    def predictive(self, z: torch.Tensor, x: torch.Tensor) -> Normal:
        """p(y | x, z) for every draw and row: a Normal with batch shape ``(S, B)``."""
        return gaussian_predictive(*self._mean_and_scale(z, x))

    def log_likelihood(self, z: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log p(y_i | x_i, z_s) per draw and row, shape ``(S, B)``."""
        if self.learns_noise:
            return learned_noise_log_likelihood(y, self._mean(z, x), z[:, -1:])
        return gaussian_log_likelihood(y, self._mean(z, x), self.noise_scale)
