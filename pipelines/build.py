"""From validated config sections to the pure-PyTorch objects of ``models/``."""

from __future__ import annotations

from models.blr import BayesianLinearRegression
from models.bnn import BayesianNeuralNetwork
from models.families import VariationalFamily, make_family
from models.logistic import BayesianLogisticRegression
from models.priors import make_prior
from pipelines.config.model import (
    LinearRegressionConfig,
    LogisticRegressionConfig,
    NeuralNetworkConfig,
    NoiseConfig,
    VAEConfig,
)
from pipelines.config.schema import GuideConfig

__all__ = ["build_model", "build_family"]


def _noise(cfg: NoiseConfig) -> dict:
    if cfg.fixed is not None:
        return {"noise_scale": cfg.fixed}
    return {"noise_prior": make_prior(cfg.learned.kind, cfg.learned.params, positive=True)}


def build_model(cfg, num_features: int, num_classes: int | None = None):
    """Build the configured model for ``num_features`` feature columns.

    ``num_classes`` (from the training labels) is used by classifiers whose config leaves ``num_classes`` out.
    """
    if isinstance(cfg, LinearRegressionConfig):
        weight_prior = make_prior(cfg.prior.weights.kind, cfg.prior.weights.params)
        intercept_prior = make_prior(cfg.prior.intercept.kind, cfg.prior.intercept.params)
        return BayesianLinearRegression(num_features, weight_prior, intercept_prior, fit_intercept=cfg.fit_intercept,
                                        **_noise(cfg.noise))
    if isinstance(cfg, LogisticRegressionConfig):
        return BayesianLogisticRegression(
            num_features, _classes(cfg, num_classes), make_prior(cfg.prior.weights.kind, cfg.prior.weights.params),
            make_prior(cfg.prior.intercept.kind, cfg.prior.intercept.params),
        )
    if isinstance(cfg, NeuralNetworkConfig):
        head = {"num_classes": _classes(cfg, num_classes)} if cfg.task == "classification" else _noise(
            cfg.noise_or_default
        )
        return BayesianNeuralNetwork(
            num_features, cfg.hidden, make_prior(cfg.prior.kind, cfg.prior.params), task=cfg.task,
            activation=cfg.activation, local_reparameterization=cfg.local_reparameterization, **head,
        )
    if isinstance(cfg, VAEConfig):
        from models.vae import VariationalAutoencoder

        return VariationalAutoencoder(
            num_features, cfg.latent_dim, encoder_hidden=cfg.encoder_hidden, decoder_hidden=cfg.decoder_hidden,
            decoder=cfg.decoder, likelihood=cfg.likelihood, total_count=cfg.total_count,
        )
    raise ValueError(f"unknown model kind {getattr(cfg, 'kind', cfg)!r}")  # pragma: no cover - schema admits known kinds


def _classes(cfg, num_classes: int | None) -> int:
    chosen = cfg.num_classes or num_classes
    if chosen is None:
        raise ValueError(f"{cfg.kind}: num_classes is neither in the config nor given from the training labels")
    return int(chosen)


def build_family(cfg: GuideConfig, dim: int, init_loc=None) -> VariationalFamily:
    """Build the configured variational family over ``dim`` unconstrained latent dimensions."""
    return make_family(cfg.family, dim, init_loc=init_loc, **cfg.family_options())
