"""Posterior predictive summaries from S draws of the variational posterior, vectorised over draws."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from models.families import VariationalFamily

__all__ = ["PredictiveSummary", "posterior_predictive", "ClassPredictive", "class_predictive"]


@dataclass(frozen=True)
class PredictiveSummary:
    """Per-row posterior predictive mean, SD and quantiles (each a tensor of shape ``(B,)``)."""

    mean: torch.Tensor
    sd: torch.Tensor
    quantiles: dict[float, torch.Tensor]


def posterior_predictive(
    model,
    family: VariationalFamily,
    x: torch.Tensor,
    *,
    num_samples: int = 500,
    quantiles: tuple[float, ...] = (0.05, 0.95),
    generator: torch.Generator | None = None,
) -> PredictiveSummary:
    """Summarise p(y* | x*, data) ~= E_q[p(y* | x*, z)] with ``num_samples`` draws of z.

    The mean and SD use the law of total variance over the draws (exact given the draws); the quantiles are
    empirical quantiles of one predictive draw of y per draw of z.
    """
    if num_samples < 2:
        raise ValueError(f"num_samples must be >= 2 for a predictive SD, got {num_samples}")
    with torch.no_grad():
        noise = torch.randn((num_samples, family.noise_dim), generator=generator, device=x.device, dtype=x.dtype)
        z = family.transform_noise(noise)
        pred = model.predictive(z, x)
        mean = pred.mean.mean(0)
        variance = pred.mean.var(0, unbiased=False) + pred.variance.mean(0)
        y = pred.mean + pred.stddev * torch.randn(pred.mean.shape, generator=generator, device=x.device, dtype=x.dtype)
        levels = torch.tensor(quantiles, dtype=x.dtype, device=x.device)
        q = torch.quantile(y, levels, dim=0)
        return PredictiveSummary(mean, variance.sqrt(), {level: q[i] for i, level in enumerate(quantiles)})



@dataclass(frozen=True)
class ClassPredictive:
    """Per-row class probabilities and their uncertainty under the posterior (nats).

    Attributes:
        probs: ``(B, C)`` posterior predictive probabilities ``E_q[p(y = c | x, z)]``.
        entropy: ``(B,)`` total predictive entropy ``H[E_q p(y | x, z)]``.
        mutual_information: ``(B,)`` its epistemic part, ``H[E_q p] - E_q H[p]``, the information about z that
            observing y would give (BALD; Houlsby et al. 2011). Zero when every draw of z predicts the same.
    """

    probs: torch.Tensor
    entropy: torch.Tensor
    mutual_information: torch.Tensor


def class_predictive(model, family: VariationalFamily, x: torch.Tensor, *, num_samples: int = 500,
                     generator: torch.Generator | None = None) -> ClassPredictive:
    """Class probabilities, predictive entropy and mutual information from ``num_samples`` draws of z."""
    with torch.no_grad():
        noise = torch.randn((num_samples, family.noise_dim), generator=generator, device=x.device, dtype=x.dtype)
        per_draw = model.predictive(family.transform_noise(noise), x)  # Categorical, batch (S, B)
        probs = per_draw.probs.mean(0)
        entropy = -(probs * torch.log(probs.clamp_min(1e-30))).sum(-1)
        expected_entropy = per_draw.entropy().mean(0)
        return ClassPredictive(probs, entropy, (entropy - expected_entropy).clamp_min(0.0))
