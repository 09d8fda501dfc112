"""A variational autoencoder (Kingma & Welling 2014): the first amortized model.

Each row ``x`` has its own latent ``z ~ N(0, I)``; the decoder gives ``p(x | z)`` and an encoder network maps ``x``
to a diagonal Gaussian ``q(z | x)`` (amortized inference: one network instead of per-row variational parameters).
Decoder and encoder weights are point estimates learned by maximising the bound, as is standard.

Likelihoods: ``binomial`` (each feature a count out of ``total_count``, e.g. digit pixel intensities 0..16) or
``bernoulli`` (0/1 features). The ``autoregressive`` decoder (a MADE network, Germain et al. 2015, built with
zuko's ``MaskedMLP``) lets feature ``i`` depend on ``z`` and on features ``< i``: strong enough to model the data
with no help from ``z``, the setting in which VAEs collapse (Bowman et al. 2016; Chen et al. 2017).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributions import Bernoulli, Binomial, Independent, Normal

__all__ = ["VariationalAutoencoder"]


def _mlp(widths: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class VariationalAutoencoder(nn.Module):
    """Encoder ``q(z | x)``, decoder ``p(x | z)`` and the standard-normal prior ``p(z)``.

    Args:
        num_features: width of a row ``x``.
        latent_dim: width of ``z``.
        encoder_hidden, decoder_hidden: hidden-layer widths of the two MLPs.
        decoder: ``"factorized"`` (features independent given z) or ``"autoregressive"``.
        likelihood: ``"binomial"`` or ``"bernoulli"``.
        total_count: trials per feature of the binomial likelihood.
    """

    kind = "vae"
    task = "density"

    def __init__(self, num_features: int, latent_dim: int, *, encoder_hidden: list[int], decoder_hidden: list[int],
                 decoder: str = "factorized", likelihood: str = "binomial", total_count: int = 16):
        super().__init__()
        if decoder not in ("factorized", "autoregressive"):
            raise ValueError(f"decoder must be 'factorized' or 'autoregressive', got {decoder!r}")
        if likelihood not in ("binomial", "bernoulli"):
            raise ValueError(f"likelihood must be 'binomial' or 'bernoulli', got {likelihood!r}")
        self.num_features, self.latent_dim = int(num_features), int(latent_dim)
        self.decoder_kind, self.likelihood = decoder, likelihood
        self.total_count = float(total_count) if likelihood == "binomial" else 1.0
        self.encoder = _mlp([self.num_features, *encoder_hidden, 2 * self.latent_dim])
        if decoder == "factorized":
            self.decoder = _mlp([self.latent_dim, *decoder_hidden, self.num_features])
        else:
            from zuko.nn import MaskedMLP

            d, p = self.latent_dim, self.num_features
            adjacency = torch.zeros(p, d + p, dtype=torch.bool)
            adjacency[:, :d] = True
            adjacency[:, d:] = torch.ones(p, p, dtype=torch.bool).tril(-1)  # feature i sees features j < i
            self.decoder = MaskedMLP(adjacency, decoder_hidden)

    # -- the three distributions ------------------------------------------------------------------------------------

    def encode(self, x: torch.Tensor) -> Normal:
        """q(z | x): a Normal with batch shape ``(B, latent_dim)``."""
        loc, raw_scale = self.encoder(x / self.total_count).chunk(2, dim=-1)
        return Normal(loc, nn.functional.softplus(raw_scale) + 1e-4, validate_args=False)

    def prior(self, like: torch.Tensor) -> Normal:
        """p(z) = N(0, I), shaped like ``like``."""
        return Normal(torch.zeros_like(like), torch.ones_like(like), validate_args=False)

    def decoder_logits(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-feature logits of p(x | z), ``(K, B, p)`` for ``z`` of shape ``(K, B, d)``."""
        if self.decoder_kind == "factorized":
            return self.decoder(z)
        context = (x / self.total_count).expand(*z.shape[:-1], -1)
        return self.decoder(torch.cat([z, context], -1))

    def log_likelihood(self, z: torch.Tensor, x: torch.Tensor, normaliser: torch.Tensor | None = None
                       ) -> torch.Tensor:
        """log p(x | z) per draw and row, shape ``(K, B)``: the binomial (Bernoulli) log-density in its logits form,
        ``x l - n softplus(l) + log C(n, x)``. It is the density of :meth:`likelihood_distribution`, without building
        that object and its three ``lgamma`` terms for every draw on every step. ``normaliser``: the rows'
        :meth:`log_normaliser` where the caller holds it (training computes it once for its table: two ``lgamma``
        over every count cost a quarter of the bound's forward pass); else it is computed here."""
        logits = self.decoder_logits(z, x)
        log_lik = (x * logits - self.total_count * nn.functional.softplus(logits)).sum(-1)
        if self.likelihood != "binomial":
            return log_lik
        return log_lik + (self.log_choose(x) if normaliser is None else normaliser)

    def log_normaliser(self, x: torch.Tensor) -> torch.Tensor:
        """The part of log p(x | z) that does not depend on z, per row: ``sum_j log C(n, x_j)`` for the binomial,
        0 for the Bernoulli."""
        return self.log_choose(x) if self.likelihood == "binomial" else x.new_zeros(x.shape[:-1])

    def log_choose(self, x: torch.Tensor) -> torch.Tensor:
        """``sum_j log C(n, x_j)`` per row: the binomial's normaliser, constant in the parameters."""
        n = self.total_count
        return (math.lgamma(n + 1) - torch.lgamma(x + 1) - torch.lgamma(n - x + 1)).sum(-1)

    def likelihood_distribution(self, z: torch.Tensor, x: torch.Tensor) -> Independent:
        """p(x | z) as a torch distribution over the ``p`` features (the reference :meth:`log_likelihood` matches)."""
        logits = self.decoder_logits(z, x)
        if self.likelihood == "bernoulli":
            return Independent(Bernoulli(logits=logits, validate_args=False), 1)
        return Independent(Binomial(total_count=self.total_count, logits=logits, validate_args=False), 1)

    def kl_to_prior(self, q: Normal) -> torch.Tensor:
        """KL(q(z | x) || N(0, I)) per row and dimension, ``(B, d)``, in closed form:
        ``(sd^2 + mu^2 - 1) / 2 - log sd`` (``torch.distributions.kl_divergence`` to :meth:`prior` is the same)."""
        return 0.5 * (q.scale.square() + q.loc.square() - 1) - q.scale.log()

    def log_joint_minus_q(self, z: torch.Tensor, x: torch.Tensor, q: Normal, normaliser: torch.Tensor | None = None
                          ) -> torch.Tensor:
        """Importance log-weights ``log p(x, z) - log q(z | x)``, shape ``(K, B)``. The two Gaussian densities in
        closed form, ``(((z - mu) / sd)^2 - z^2) / 2 + log sd`` per dimension (their ``log 2 pi`` terms cancel), with
        ``log sd`` taken once per row rather than once per draw: the IWAE validation evaluates it 64 times a row.
        ``normaliser``: as for :meth:`log_likelihood`."""
        standardised = (z - q.loc) / q.scale
        log_ratio = 0.5 * (standardised.square() - z.square()).sum(-1) + q.scale.log().sum(-1)
        return self.log_likelihood(z, x, normaliser) + log_ratio
