"""A Bayesian neural network (an MLP with a prior on every weight and bias) for Bayes by Backprop.

Bayes by Backprop (Blundell et al. 2015) is SVI with a variational family over the network's weights: here any
:class:`~models.families.VariationalFamily` over the flat weight vector, so the usual ELBO code trains it. A forward
pass evaluates all ``S`` weight draws at once with batched matrix products.

With ``local_reparameterization`` (Kingma, Salimans & Welling 2015) and a mean-field Gaussian q, each layer's
pre-activations ``a = h W + b`` are Gaussian given the layer input ``h``, with mean ``h m_W + m_b`` and variance
``h^2 s_W^2 + s_b^2``; sampling them directly, independently per row, gives the same ELBO with gradients whose
variance falls with the minibatch size (one weight draw shared by the whole minibatch correlates its rows).
"""

from __future__ import annotations

import math

import torch
from torch.distributions import Categorical, Distribution, Independent, Normal

from models.families import MeanFieldGaussian
from models.latent import (
    GlobalLatentModel,
    LatentBlock,
    gaussian_log_likelihood,
    gaussian_predictive,
    learned_noise_log_likelihood,
    move_distribution,
)
from models.priors import TO_POSITIVE, PriorDensity

__all__ = ["BayesianNeuralNetwork", "ACTIVATIONS"]

ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu}


class BayesianNeuralNetwork(GlobalLatentModel):
    """An MLP ``num_features -> hidden... -> outputs`` with a Gaussian (regression) or categorical head.

    Args:
        num_features: input width.
        hidden: widths of the hidden layers.
        weight_prior: scalar prior applied independently to every weight and bias.
        task: ``"regression"`` (one output, Normal likelihood) or ``"classification"``.
        num_classes: classes of a classifier (two classes use one logit, like logistic regression).
        noise_scale / noise_prior: a fixed noise scale, or a prior on a learned one (regression; exactly one).
        activation: ``"tanh"`` or ``"relu"``.
        local_reparameterization: sample pre-activations from q's marginals (needs a mean-field family).
    """

    kind = "bayesian_neural_network"

    def __init__(self, num_features: int, hidden: list[int], weight_prior: Distribution, *, task: str = "regression",
                 num_classes: int | None = None, noise_scale: float | None = None,
                 noise_prior: Distribution | None = None, activation: str = "tanh",
                 local_reparameterization: bool = False):
        if task not in ("regression", "classification"):
            raise ValueError(f"task must be 'regression' or 'classification', got {task!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        if task == "classification" and (num_classes is None or num_classes < 2):
            raise ValueError(f"a classifier needs num_classes >= 2, got {num_classes}")
        if task == "regression" and (noise_scale is None) == (noise_prior is None):
            raise ValueError("a regression network needs exactly one of noise_scale (fixed) or noise_prior (learned)")
        self.task, self.activation = task, activation
        self.num_features, self.hidden = int(num_features), [int(h) for h in hidden]
        self.num_classes = int(num_classes) if task == "classification" else None
        self.num_outputs = 1 if task == "regression" or num_classes == 2 else int(num_classes)
        self.weight_prior, self.noise_prior = weight_prior, noise_prior
        self._densities()
        self.noise_scale = None if noise_scale is None else float(noise_scale)
        self.local_reparameterization = bool(local_reparameterization)
        widths = [self.num_features, *self.hidden, self.num_outputs]
        blocks, start = [], 0
        self.layers: list[tuple[int, int, slice, slice]] = []  # (fan_in, fan_out, weight slice, bias slice)
        for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
            weight = LatentBlock(f"layer{i}.weight", start, fan_in * fan_out)
            bias = LatentBlock(f"layer{i}.bias", weight.stop, fan_out)
            blocks += [weight, bias]
            self.layers.append((fan_in, fan_out, slice(weight.start, weight.stop), slice(bias.start, bias.stop)))
            start = bias.stop
        self.num_weights = start
        if self.learns_noise:
            blocks.append(LatentBlock("noise_scale", start, 1, positive=True))
        self.blocks = tuple(blocks)
        self._gaussian_prior: Distribution | None = None

    @property
    def learns_noise(self) -> bool:
        return self.task == "regression" and self.noise_scale is None

    def to(self, device) -> BayesianNeuralNetwork:
        self._gaussian_prior = None
        self.weight_prior = move_distribution(self.weight_prior, device)
        if self.noise_prior is not None:
            self.noise_prior = move_distribution(self.noise_prior, device)
        self._densities()
        return self

    def _densities(self) -> None:
        self._weight_density = PriorDensity(self.weight_prior)
        self._noise_density = None if self.noise_prior is None else PriorDensity(self.noise_prior)

    def initial_loc(self) -> torch.Tensor:
        """LeCun-normal weights (SD ``1/sqrt(fan_in)``) and zero biases, from the global torch RNG."""
        loc = torch.zeros(self.latent_dim)
        for fan_in, fan_out, w, _ in self.layers:
            loc[w] = torch.randn(fan_in * fan_out) / math.sqrt(fan_in)
        return loc

    # -- the network ------------------------------------------------------------------------------------------------

    def outputs(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Network outputs for every weight draw and row, shape ``(S, B, outputs)``."""
        act = ACTIVATIONS[self.activation]
        h = x
        for i, (fan_in, fan_out, w, b) in enumerate(self.layers):
            weight = z[..., w].reshape(*z.shape[:-1], fan_in, fan_out)
            h = torch.matmul(h, weight) + z[..., b].unsqueeze(-2)
            if i < len(self.layers) - 1:
                h = act(h)
        return h

    def local_outputs(self, family, x: torch.Tensor, num_particles: int) -> torch.Tensor:
        """Outputs with pre-activations sampled from q's Gaussian marginals, independently per row and particle."""
        if not isinstance(family, MeanFieldGaussian):
            raise ValueError(f"local reparameterisation needs a mean-field Gaussian family, got {type(family).__name__}")
        act = ACTIVATIONS[self.activation]
        mean, var = family.mean, family.stddev.square()
        h = x
        for i, (fan_in, fan_out, w, b) in enumerate(self.layers):
            a_mean = torch.matmul(h, mean[w].view(fan_in, fan_out)) + mean[b]
            a_var = torch.matmul(h.square(), var[w].view(fan_in, fan_out)) + var[b]
            shape = (num_particles, *a_mean.shape[-2:]) if i == 0 else a_mean.shape
            h = a_mean + a_var.sqrt() * torch.randn(shape, dtype=x.dtype, device=x.device)
            if i < len(self.layers) - 1:
                h = act(h)
        return h

    def _head(self, out: torch.Tensor, z: torch.Tensor) -> Distribution:
        if self.task == "classification":
            logits = torch.cat([torch.zeros_like(out), out], -1) if self.num_classes == 2 else out
            return Categorical(logits=logits, validate_args=False)
        return gaussian_predictive(out.squeeze(-1), self._noise(z))

    def _noise(self, z: torch.Tensor) -> float | torch.Tensor:
        """The regression noise scale: the fixed number, or one per draw ``(S, 1)``."""
        return TO_POSITIVE(z[..., -1:]) if self.learns_noise else self.noise_scale

    def predictive(self, z: torch.Tensor, x: torch.Tensor) -> Distribution:
        """p(y | x, z) with batch shape ``(S, B)``: Normal (regression) or Categorical (classification)."""
        return self._head(self.outputs(z, x), z)

    def log_likelihood(self, z: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._log_prob(self.outputs(z, x), z, y)

    def local_log_likelihood(self, family, z: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log p(y | x) per particle and row with locally reparameterised layers; ``z`` supplies the noise scale."""
        return self._log_prob(self.local_outputs(family, x, z.shape[0]), z, y)

    def _log_prob(self, out: torch.Tensor, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log p(y | outputs): the predictive's density (Gaussian in closed form, as :func:`gaussian_log_likelihood`
        explains)."""
        if self.task == "classification":
            return self._head(out, z).log_prob(y.long())
        if self.learns_noise:
            return learned_noise_log_likelihood(y, out.squeeze(-1), z[..., -1:])
        return gaussian_log_likelihood(y, out.squeeze(-1), self.noise_scale)

    # -- the prior --------------------------------------------------------------------------------------------------

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        lp = self._weight_density.weights(z[..., : self.num_weights])
        if self.learns_noise:
            lp = lp + self._noise_density.log_scale(z[..., -1])
        return lp

    def gaussian_prior(self) -> Distribution | None:
        if self.learns_noise or not isinstance(self.weight_prior, Normal):
            return None
        if self._gaussian_prior is None:
            d = self.num_weights
            prior = Normal(self.weight_prior.loc.expand(d), self.weight_prior.scale.expand(d), validate_args=False)
            self._gaussian_prior = Independent(prior, 1, validate_args=False)
        return self._gaussian_prior
