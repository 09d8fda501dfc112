"""From validated config sections to the pure-PyTorch objects of ``models/``."""

from __future__ import annotations

from models.blr import BayesianLinearRegression
from models.families import VariationalFamily, make_family
from models.priors import make_prior
from pipelines.config import GuideConfig, ModelConfig

__all__ = ["build_model", "build_family"]


def build_model(cfg: ModelConfig, num_features: int) -> BayesianLinearRegression:
    """Build the configured model for ``num_features`` feature columns."""
    if cfg.kind != "bayesian_linear_regression":  # pragma: no cover - the config schema only admits known kinds
        raise ValueError(f"unknown model kind {cfg.kind!r}")
    weight_prior = make_prior(cfg.prior.weights.kind, cfg.prior.weights.params)
    intercept_prior = make_prior(cfg.prior.intercept.kind, cfg.prior.intercept.params)
    if cfg.noise.fixed is not None:
        return BayesianLinearRegression(num_features, weight_prior, intercept_prior, noise_scale=cfg.noise.fixed,
                                        fit_intercept=cfg.fit_intercept)
    noise_prior = make_prior(cfg.noise.learned.kind, cfg.noise.learned.params, positive=True)
    return BayesianLinearRegression(num_features, weight_prior, intercept_prior, noise_prior=noise_prior,
                                    fit_intercept=cfg.fit_intercept)


def build_family(cfg: GuideConfig, dim: int) -> VariationalFamily:
    """Build the configured variational family over ``dim`` unconstrained latent dimensions."""
    return make_family(cfg.family, dim, **cfg.family_options())
