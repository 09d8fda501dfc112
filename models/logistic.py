"""Bayesian logistic and softmax regression, ``y ~ Categorical(softmax(x @ W + b))`` over classes ``0..C-1``.

With two classes the model is logistic regression: one weight vector and intercept give the log-odds of class 1
(the class-0 logit is fixed at 0, which identifies the model). With ``C > 2`` every class has its own weights and
intercept (softmax regression); the prior identifies the otherwise shift-invariant logits.
"""

from __future__ import annotations

import torch
from torch.distributions import Categorical, Distribution, Independent, Normal

from models.latent import GlobalLatentModel, LatentBlock, move_distribution

__all__ = ["BayesianLogisticRegression"]


class BayesianLogisticRegression(GlobalLatentModel):
    """Logistic (two classes) or softmax (more) regression with scalar priors on every weight and intercept.

    Latent layout: ``weights`` (``p * K`` values, row-major ``(p, K)``) then ``intercept`` (``K``), with ``K = 1``
    for two classes and ``K = C`` otherwise.
    """

    kind = "bayesian_logistic_regression"
    task = "classification"

    def __init__(self, num_features: int, num_classes: int, weight_prior: Distribution,
                 intercept_prior: Distribution):
        if num_features < 1:
            raise ValueError(f"num_features must be >= 1, got {num_features}")
        if num_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got num_classes={num_classes}")
        self.num_features, self.num_classes = int(num_features), int(num_classes)
        self.num_logits = 1 if self.num_classes == 2 else self.num_classes
        self.weight_prior, self.intercept_prior = weight_prior, intercept_prior
        p, k = self.num_features, self.num_logits
        self.blocks = (LatentBlock("weights", 0, p * k), LatentBlock("intercept", p * k, k))
        self._gaussian_prior: Distribution | None = None

    def to(self, device) -> BayesianLogisticRegression:
        self._gaussian_prior = None
        self.weight_prior = move_distribution(self.weight_prior, device)
        self.intercept_prior = move_distribution(self.intercept_prior, device)
        return self

    def logits(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Class logits for every draw and row, shape ``(S, B, C)``."""
        p, k = self.num_features, self.num_logits
        weights = z[..., : p * k].reshape(*z.shape[:-1], p, k)
        intercept = z[..., p * k :]
        eta = torch.matmul(x, weights) + intercept.unsqueeze(-2)  # (S, B, K)
        if self.num_classes == 2:
            eta = torch.cat([torch.zeros_like(eta), eta], -1)
        return eta

    def predictive(self, z: torch.Tensor, x: torch.Tensor) -> Categorical:
        """p(y | x, z): a Categorical with batch shape ``(S, B)``."""
        return Categorical(logits=self.logits(z, x), validate_args=False)

    def log_likelihood(self, z: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log p(y_i | x_i, z_s), shape ``(S, B)``; ``y`` holds class indices (any numeric dtype)."""
        logits = self.logits(z, x)
        index = y.long().view(1, -1, 1).expand(logits.shape[0], -1, 1)
        return logits.gather(-1, index).squeeze(-1) - torch.logsumexp(logits, -1)

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        p, k = self.num_features, self.num_logits
        return self.weight_prior.log_prob(z[..., : p * k]).sum(-1) + self.intercept_prior.log_prob(z[..., p * k :]).sum(-1)

    def gaussian_prior(self) -> Distribution | None:
        if not (isinstance(self.weight_prior, Normal) and isinstance(self.intercept_prior, Normal)):
            return None
        if self._gaussian_prior is None:
            p, k = self.num_features, self.num_logits
            loc = torch.cat([self.weight_prior.loc.expand(p * k), self.intercept_prior.loc.expand(k)])
            scale = torch.cat([self.weight_prior.scale.expand(p * k), self.intercept_prior.scale.expand(k)])
            self._gaussian_prior = Independent(Normal(loc, scale, validate_args=False), 1, validate_args=False)
        return self._gaussian_prior
