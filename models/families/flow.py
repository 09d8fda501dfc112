"""The normalizing-flow family: a zuko neural spline flow behind a learned elementwise affine map."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import AffineTransform, Distribution, TransformedDistribution
from torch.nn import functional as F

from models.families.base import VariationalFamily, initial_loc, inverse_softplus, positive_scale

__all__ = ["NormalizingFlow"]


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

        self.loc = nn.Parameter(initial_loc(dim, init_loc))
        self.scale_unconstrained = nn.Parameter(torch.full((dim,), inverse_softplus(positive_scale(init_scale))))
        # Coupling (passes=2) keeps both directions one network pass; a one-dimensional latent has nothing to couple.
        passes = 2 if dim > 1 else None
        self.flow = zuko.flows.NSF(features=dim, context=0, transforms=transforms, bins=bins,
                                   hidden_features=tuple(hidden_features), passes=passes)

    def distribution(self) -> Distribution:
        affine = AffineTransform(self._loc(), self.precond_scale * F.softplus(self.scale_unconstrained), event_dim=1)
        return TransformedDistribution(self.flow(), [affine], validate_args=False)

    def _unit_scale(self) -> None:
        self.scale_unconstrained.fill_(inverse_softplus(1.0))

    def transform_noise(self, noise: torch.Tensor) -> torch.Tensor:
        flow = self.flow()  # zuko: x = transform.inv(u) for base noise u
        return self._loc() + self.precond_scale * F.softplus(self.scale_unconstrained) * flow.transform.inv(noise)

    @property
    def mean(self) -> torch.Tensor:
        return self._sampled_moments()[0]

    @property
    def stddev(self) -> torch.Tensor:
        return self._sampled_moments()[1]
