"""KL divergences of the Gaussian families to a diagonal Gaussian prior, in closed form.

The ELBO needs KL(q || prior) on every training step. torch's ``kl_divergence`` gives these values too (the tests in
``tests/models`` hold each function to it, value and gradient), but only after building distribution objects, and
for a full-rank or low-rank q only against a prior rebuilt as a ``MultivariateNormal``. Against a diagonal prior its
solves are divisions, and a low-rank q's log-determinant needs only an ``r x r`` factor.
"""

from __future__ import annotations

import math
import weakref

import torch
from torch.distributions import Independent

__all__ = ["diagonal_gaussian_kl", "full_rank_gaussian_kl", "low_rank_gaussian_kl"]


def diagonal_gaussian_kl(loc: torch.Tensor, scale: torch.Tensor, prior_loc: torch.Tensor | float,
                         prior_scale: torch.Tensor | float) -> torch.Tensor:
    """KL(N(loc, diag scale^2) || N(prior_loc, diag prior_scale^2)) in closed form, summed over coordinates.

    torch's ``kl_divergence`` of the two ``Independent(Normal)`` gives the same value (``tests/models`` checks it);
    this is its arithmetic without building distribution objects on every training step. The prior's location and
    scale may be numbers (the same for every coordinate), which saves the step a few tensor operations.
    """
    unit = isinstance(prior_scale, float) and prior_scale == 1.0  # N(0, 1) priors: no division by one (two ops)
    var_ratio = (scale if unit else scale / prior_scale).square()
    centred = loc if isinstance(prior_loc, float) and prior_loc == 0.0 else loc - prior_loc
    return 0.5 * (var_ratio + (centred if unit else centred / prior_scale).square() - 1 - var_ratio.log()).sum()


def full_rank_gaussian_kl(loc: torch.Tensor, scale_tril: torch.Tensor, prior_loc: torch.Tensor | float,
                          prior_scale: torch.Tensor | float) -> torch.Tensor:
    """KL(N(loc, L L^T) || N(prior_loc, diag prior_scale^2)) in closed form, ``L = scale_tril`` lower-triangular.

    torch's ``kl_divergence`` has no pair for a ``MultivariateNormal`` and an ``Independent(Normal)``: it would need
    the prior rebuilt as a ``MultivariateNormal`` and two triangular solves with its (diagonal) factor on every
    step. Against a diagonal prior the solves are divisions: ``0.5 (||diag(1/s) L||_F^2 + ||(loc - m) / s||^2 - D)
    + sum log s - sum log diag L``. ``tests/models`` checks it against ``kl_divergence`` of the two
    ``MultivariateNormal`` objects, value and gradient.
    """
    column_scale = prior_scale if isinstance(prior_scale, float) else prior_scale.unsqueeze(-1)
    centred = loc if isinstance(prior_loc, float) and prior_loc == 0.0 else loc - prior_loc
    log_prior_scale = (math.log(prior_scale) * loc.shape[-1] if isinstance(prior_scale, float)
                       else prior_scale.log().sum())
    return (0.5 * ((scale_tril / column_scale).square().sum() + (centred / prior_scale).square().sum() - loc.shape[-1])
            + log_prior_scale - scale_tril.diagonal(dim1=-2, dim2=-1).log().sum())


def low_rank_gaussian_kl(loc: torch.Tensor, cov_factor: torch.Tensor, diag_scale: torch.Tensor,
                         prior_loc: torch.Tensor | float, prior_scale: torch.Tensor | float) -> torch.Tensor:
    """KL(N(loc, W W^T + diag(d^2)) || N(prior_loc, diag prior_scale^2)) in closed form, ``W = cov_factor`` of shape
    ``(D, r)`` and ``d = diag_scale``.

    torch's ``kl_divergence`` pairs a ``LowRankMultivariateNormal`` with a ``MultivariateNormal`` only: the prior
    rebuilt with a ``D x D`` factor and triangular solves with it on every step, ``O(D^2 r)`` work. Against a
    diagonal prior the trace is ``sum_i (sum_k W_ik^2 + d_i^2) / s_i^2``, and the log-determinant of q follows from
    the matrix determinant lemma, ``2 sum log d + log det(I_r + W^T diag(d^-2) W)``, an ``r x r`` Cholesky factor:
    ``O(D r^2)``. ``tests/models`` checks it against ``kl_divergence``, value and gradient.
    """
    dim, rank = cov_factor.shape
    whitened = cov_factor / diag_scale.unsqueeze(-1)
    capacitance = torch.eye(rank, dtype=cov_factor.dtype, device=cov_factor.device) + whitened.T @ whitened
    # I + W^T D^-2 W is positive definite for any W and d > 0: cholesky_ex skips cholesky's check of the result,
    # which reads it back to the host (a sync per step on a GPU, and an operation a CUDA graph cannot hold).
    log_det_q = 2 * (diag_scale.log().sum() + torch.linalg.cholesky_ex(capacitance).L.diagonal().log().sum())
    variance = cov_factor.square().sum(-1) + diag_scale.square()
    centred = loc if isinstance(prior_loc, float) and prior_loc == 0.0 else loc - prior_loc
    log_prior_scale = math.log(prior_scale) * dim if isinstance(prior_scale, float) else prior_scale.log().sum()
    prior_variance = prior_scale * prior_scale
    return (0.5 * ((variance + centred.square()) / prior_variance).sum() - 0.5 * dim + log_prior_scale
            - 0.5 * log_det_q)


#: A diagonal Normal prior's (location, scale) for the closed-form KLs above, read once per prior object.
_PRIOR_TERMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _prior_terms(prior: Independent) -> tuple[torch.Tensor | float, torch.Tensor | float]:
    """Each of the prior's location and scale as a number where every coordinate has the same value and no gradient
    flows into it (a prior built once, as the models build theirs), else the tensor itself."""
    terms = _PRIOR_TERMS.get(prior)
    if terms is None:
        terms = tuple(_constant(t) for t in (prior.base_dist.loc, prior.base_dist.scale))
        _PRIOR_TERMS[prior] = terms
    return terms


def _constant(values: torch.Tensor) -> torch.Tensor | float:
    if values.requires_grad or values.numel() == 0:
        return values
    first = values.reshape(-1)[0]
    return float(first) if bool((values == first).all()) else values
