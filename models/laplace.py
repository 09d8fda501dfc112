"""Laplace approximation of a posterior: its mode (by L-BFGS) and the marginal SDs of the Gaussian there.

Used to precondition SVI: the variational parameters are measured from the mode in units of these SDs, so that one
Adam step size suits a slope whose posterior SD is 0.001 and an intercept whose SD is 10 alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["LaplaceApproximation", "laplace_approximation", "MAX_LAPLACE_DIM"]

#: The Hessian is formed densely; above this many latent dimensions use no preconditioner instead.
MAX_LAPLACE_DIM = 1024


@dataclass(frozen=True)
class LaplaceApproximation:
    """Mode and marginal SDs (unconstrained space) of the Gaussian approximation at the posterior mode.

    Attributes:
        mode: the maximiser of log p(y | x, z) + log p(z), shape ``(D,)``.
        marginal_sd: ``sqrt(diag(H^-1))`` for the Hessian ``H`` of the negative log joint at the mode.
        log_joint: log p(y, z) at the mode.
        scale_tril: the Cholesky factor of ``H^-1`` (the full Laplace covariance).
    """

    mode: torch.Tensor
    marginal_sd: torch.Tensor
    log_joint: float
    scale_tril: torch.Tensor


def laplace_approximation(model, x: torch.Tensor, y: torch.Tensor, *, max_iter: int = 500) -> LaplaceApproximation:
    """Find the posterior mode of ``model`` given all of ``(x, y)`` and the marginal SDs of the Laplace Gaussian.

    Computed in float64. Raises ``ValueError`` when the model is too large for a dense Hessian, when the optimiser
    does not reach a finite mode, or when the Hessian there is not positive definite (an improper posterior).
    """
    dim = model.latent_dim
    if dim > MAX_LAPLACE_DIM:
        raise ValueError(f"a Laplace preconditioner forms a dense {dim}x{dim} Hessian; at most {MAX_LAPLACE_DIM} dims")
    x64, y64 = x.detach().to(torch.float64), y.detach().to(torch.float64)

    def neg_log_joint(z: torch.Tensor) -> torch.Tensor:
        zz = z.unsqueeze(0)
        return -(model.log_likelihood(zz, x64, y64).sum() + model.log_prior(zz).sum())

    z = torch.zeros(dim, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([z], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                                  history_size=20, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = neg_log_joint(z)
        loss.backward()
        return loss

    optimizer.step(closure)
    mode = z.detach()
    value = float(neg_log_joint(mode))
    if not torch.isfinite(mode).all() or value != value or abs(value) == float("inf"):
        raise ValueError("the Laplace approximation found no finite posterior mode")
    hessian = torch.autograd.functional.hessian(neg_log_joint, mode, vectorize=True)
    hessian = 0.5 * (hessian + hessian.T)
    chol, info = torch.linalg.cholesky_ex(hessian)
    if int(info) != 0:
        raise ValueError("the Hessian at the posterior mode is not positive definite (is the posterior proper?)")
    covariance = torch.cholesky_inverse(chol)
    covariance = 0.5 * (covariance + covariance.T)
    tril = torch.linalg.cholesky(covariance)
    return LaplaceApproximation(mode.float(), covariance.diagonal().sqrt().float(), -value, tril.float())
