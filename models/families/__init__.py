"""Variational families q(z) over a flat vector of unconstrained latent variables.

A family is a small ``nn.Module`` with one job: hold variational parameters and define q by its reparameterisation
(:meth:`~models.families.base.VariationalFamily.transform_noise`) and its ``torch.distributions`` object
(:meth:`~models.families.base.VariationalFamily.distribution`): sampling goes through the first, log-density, entropy
and KL through the second.

Families: mean-field Gaussian, full-rank Gaussian (Cholesky factor), low-rank-plus-diagonal Gaussian, and a
normalizing flow (a zuko neural spline flow on top of a learned elementwise affine map). docs/families.md says when to
use which.
"""

from __future__ import annotations

from models.families.base import MOMENT_SAMPLES, VariationalFamily
from models.families.flow import NormalizingFlow
from models.families.gaussian import FullRankGaussian, LowRankGaussian, MeanFieldGaussian

__all__ = [
    "VariationalFamily",
    "MeanFieldGaussian",
    "FullRankGaussian",
    "LowRankGaussian",
    "NormalizingFlow",
    "make_family",
    "FAMILIES",
    "MOMENT_SAMPLES",
]

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
