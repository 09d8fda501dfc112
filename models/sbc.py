"""Simulation-based calibration (Talts et al. 2018) of variational inference on a fitted model's own design.

Repeat ``fits`` times: draw ``z ~ p(z)``, simulate ``y ~ p(y | x, z)`` on the given design ``x``, fit a fresh
variational family to ``(x, y)`` by full-batch SVI, draw ``draws`` samples from it and record the **rank** of each
coordinate of the true ``z`` among them. If q were the exact posterior, every rank would be uniform on
``0..draws``. A q that is too narrow piles ranks at both ends (a U), a too-wide one in the middle (a hump), a biased
one on one side. Uniformity is tested per coordinate with a chi-squared test over ``bins`` equal bins of the ranks
(the counts are exactly multinomial under the null), with a Bonferroni correction over the coordinates.

Needs a model whose prior over the unconstrained latents is one Gaussian (``model.gaussian_prior()``): linear
regression with normal priors and fixed noise, logistic/softmax regression with normal priors. This is the check
NumPyro and Stan users run before trusting an approximate posterior on small models; it costs ``fits`` full fits.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.distributions import Chi2

from models.objectives import elbo

__all__ = ["SBCResult", "simulation_based_calibration"]


@dataclass(frozen=True)
class SBCResult:
    """Ranks of the true latents among the variational draws, and their uniformity.

    Attributes:
        ranks: ``(fits, dim)`` integers in ``0..draws``.
        draws: posterior draws per fit; bins: bins of the uniformity test.
        p_values: per coordinate, the chi-squared p-value of uniform ranks.
        alpha: the family-wise level; passed: every p-value is above ``alpha / dim`` (Bonferroni).
        seconds: wall time of all fits.
    """

    ranks: np.ndarray
    draws: int
    bins: int
    p_values: np.ndarray
    alpha: float
    seconds: float

    @property
    def passed(self) -> bool:
        return bool((self.p_values > self.alpha / len(self.p_values)).all())

    def histogram(self) -> np.ndarray:
        """``(dim, bins)`` rank counts."""
        edges = np.linspace(0, self.draws + 1, self.bins + 1)
        return np.stack([np.histogram(column, bins=edges)[0] for column in self.ranks.T])


def _uniformity_p_values(ranks: np.ndarray, draws: int, bins: int) -> np.ndarray:
    edges = np.linspace(0, draws + 1, bins + 1)
    counts = np.stack([np.histogram(column, bins=edges)[0] for column in ranks.T]).astype(float)
    expected = ranks.shape[0] / bins
    statistic = ((counts - expected) ** 2 / expected).sum(axis=1)
    return 1.0 - Chi2(torch.tensor(float(bins - 1))).cdf(torch.as_tensor(statistic)).numpy()


class _FitLoss(torch.nn.Module):
    """The negative ELBO of one fit as a module whose only state is its family: what :func:`torch.func.vmap` maps
    over, with the families' parameters stacked along a leading ``fits`` dimension."""

    def __init__(self, family: torch.nn.Module):
        super().__init__()
        self.family = family

    def forward(self, model, x: torch.Tensor, y: torch.Tensor, particles: int) -> torch.Tensor:
        return -elbo(model, self.family, x, y, dataset_size=len(x), num_particles=particles).elbo


def simulation_based_calibration(model, make_family: Callable[[], torch.nn.Module], x: torch.Tensor, *,
                                 fits: int = 100, draws: int = 99, steps: int = 1500, lr: float = 0.02,
                                 particles: int = 4, bins: int = 10, alpha: float = 0.01, seed: int = 0
                                 ) -> SBCResult:
    """Run SBC of the VI that ``make_family`` (a fresh family per call) gives on design ``x`` of ``model``.

    The ``fits`` fits are independent, so they run as one: the families' parameters are stacked
    (:func:`torch.func.stack_module_state`), one ELBO per fit is evaluated under :func:`torch.func.vmap` with
    independent draws per fit, and one Adam steps them all (Adam is elementwise and the fits' losses share no
    parameter, so each fit takes exactly the steps it would alone). That makes SBC one fit's Python overhead
    instead of ``fits`` of them.

    Raises:
        ValueError: the model's prior over z is not one Gaussian, or ``draws + 1`` is not a multiple of ``bins``.
    """
    from torch.func import functional_call, stack_module_state, vmap

    prior = model.gaussian_prior()
    if prior is None:
        raise ValueError("simulation-based calibration needs a model whose prior over z is one Gaussian (normal "
                         "priors and fixed noise)")
    if (draws + 1) % bins:
        raise ValueError(f"draws + 1 ({draws + 1}) must be a multiple of bins ({bins}) for equal rank bins")
    generator = torch.Generator().manual_seed(seed)
    x = x.to(torch.float32)
    began = time.perf_counter()
    truths = prior.mean + prior.stddev * torch.randn((fits, *prior.mean.shape), generator=generator)
    torch.manual_seed(seed)  # the simulated data, the families' initial values and the fits' draws
    with torch.no_grad():
        ys = model.predictive(truths, x).sample()  # (fits, rows): one simulated dataset per true z
    fitted = [_FitLoss(make_family()) for _ in range(fits)]
    params, buffers = stack_module_state(fitted)
    template = copy.deepcopy(fitted[0]).to("meta")

    def loss(fit_params, fit_buffers, y):
        return functional_call(template, (fit_params, fit_buffers), (model, x, y, particles))

    losses = vmap(loss, randomness="different")
    optimizer = torch.optim.Adam(params.values(), lr=lr, fused=True)
    for _ in range(steps):
        optimizer.zero_grad()
        losses(params, buffers, ys).sum().backward()
        optimizer.step()
    ranks = np.zeros((fits, model.latent_dim), dtype=np.int64)
    stacked, saved = {**params, **buffers}, fitted[0].state_dict().keys()  # saved: without non-persistent buffers
    with torch.no_grad():
        for i, fit in enumerate(fitted):
            fit.load_state_dict({name: stacked[name][i] for name in saved})
            ranks[i] = (fit.family.rsample(draws, generator=generator) < truths[i]).sum(0).numpy()
    p_values = _uniformity_p_values(ranks, draws, bins)
    return SBCResult(ranks, draws, bins, p_values, alpha, time.perf_counter() - began)
