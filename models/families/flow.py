"""The normalizing-flow family: a zuko neural spline flow behind a learned elementwise affine map."""

from __future__ import annotations

import torch
import zuko
from torch import nn
from torch.distributions import AffineTransform, Distribution, TransformedDistribution
from torch.nn import functional as F
from zuko.transforms import AutoregressiveTransform, ComposedTransform

from models.families.base import VariationalFamily, initial_loc, inverse_softplus, positive_scale

__all__ = ["NormalizingFlow"]


class NormalizingFlow(VariationalFamily):
    """A normalizing flow: ``z = loc + scale * f(u)``, ``u ~ N(0, I)``, ``f`` a zuko neural spline flow.

    The spline flow (coupling layers: a density takes one pass of each layer's conditioner, a draw two) captures
    skewness, heavy-ish tails and curved dependence; the learned elementwise affine map in front of it puts the flow's
    working range where the posterior is, so the flow only has to learn the shape. With the flow at identity this is
    the mean-field family.

    Args:
        transforms: number of spline coupling layers.
        hidden_features: hidden widths of each layer's conditioner network.
        bins: spline bins per dimension.
    """

    #: KL(q || prior) has no closed form: the ELBO estimates it from the draws, with log q from
    #: :meth:`rsample_with_log_prob`.
    closed_form_kl = False

    def __init__(self, dim: int, init_scale: float = 0.1, transforms: int = 3,
                 hidden_features: tuple[int, ...] | list[int] = (32, 32), bins: int = 8,
                 init_loc: torch.Tensor | None = None):
        super().__init__(dim)
        self.loc = nn.Parameter(initial_loc(dim, init_loc))
        self.scale_unconstrained = nn.Parameter(torch.full((dim,), inverse_softplus(positive_scale(init_scale))))
        # Coupling (passes=2): a density is one pass of each layer's network, a draw two (a fully autoregressive flow
        # would take `dim`); a one-dimensional latent has nothing to couple.
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

    def rsample_with_log_prob(self, num_particles: int, antithetic: bool = False,
                              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Draws and log q at each of them from the passes that invert the flow (the draws :meth:`rsample` makes).

        ``log q(z) = log N(u) + log|det df/dx| - sum log scale``, where ``x = f^{-1}(u)`` is the draw before the affine
        map. :func:`_invert_with_log_det` reads each layer's log-determinant from the spline of its last inversion
        pass; drawing with :meth:`rsample` and then calling :meth:`log_prob` would run every conditioner once more."""
        noise = self._noise(num_particles, antithetic, generator)
        flow = self.flow()
        x, log_det = _invert_with_log_det(flow.transform, noise)
        scale = self.precond_scale * F.softplus(self.scale_unconstrained)
        return torch.addcmul(self._loc(), scale, x), flow.base.log_prob(noise) + log_det - scale.log().sum()

    @property
    def mean(self) -> torch.Tensor:
        return self._sampled_moments()[0]

    @property
    def stddev(self) -> torch.Tensor:
        return self._sampled_moments()[1]


def _invert_with_log_det(transform, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x = f^{-1}(u)`` and ``log|det df/dx|`` at ``x``, per draw, for zuko's flow transform ``f``.

    An autoregressive layer is inverted in ``passes`` passes of its conditioner, each making one more block of
    coordinates exact. The spline of the last pass is conditioned on the blocks already exact, so it is the layer's
    spline at ``x``, and its log-determinant at ``x`` is the layer's; zuko's ``inv.call_and_ladj`` evaluates the
    conditioner once more for it. A transform with layers of another kind is left to zuko."""
    layers = transform.transforms if isinstance(transform, ComposedTransform) else (transform,)
    if not all(isinstance(layer, AutoregressiveTransform) for layer in layers):
        x, inverse_log_det = transform.inv.call_and_ladj(u)
        return x, -inverse_log_det
    log_det = torch.zeros(u.shape[:-1], dtype=u.dtype, device=u.device)
    for layer in reversed(layers):
        x = torch.zeros_like(u)
        for _ in range(layer.passes - 1):
            x = layer.meta(x).inv(u)
        spline = layer.meta(x)
        x = spline.inv(u)
        log_det = log_det + spline.log_abs_det_jacobian(x, u)
        u = x
    return u, log_det
