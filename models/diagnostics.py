"""Diagnostics of a fitted variational posterior that need only the model, the family and data.

PSIS k-hat (Yao, Vehtari, Simpson & Gelman 2018, "Yes, but did it work?"): draw z from q, form the importance
log-ratios log p(y, z) - log q(z) over the whole training set, and fit a generalized Pareto distribution to their
upper tail. k-hat < 0.5: q is close to the posterior; 0.5-0.7: usable for point estimates; > 0.7: q is unreliable
(typically it is too narrow, as a mean-field family on a correlated posterior is). The Pareto fit is arviz-stats'.
When the tail weights are degenerate (their logs span more than 100 nats), k-hat is reported as ``KHAT_DEGENERATE``
(10, also the cap of any estimate).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.objectives import row_chunks

__all__ = [
    "importance_log_ratios",
    "importance_diagnostics",
    "ImportanceDiagnostics",
    "khat_from_log_ratios",
    "psis_khat",
    "KHAT_UNRELIABLE",
    "KHAT_DEGENERATE",
]

#: Above this k-hat the variational approximation should not be trusted (Yao et al. 2018).
KHAT_UNRELIABLE = 0.7
#: Reported for degenerate importance weights (a few draws carry all the weight) and capped at: a finite value, so
#: that it can be charted in MLflow and passed through JSON (XCom, ``--json``); any k-hat above 1 means "unusable".
KHAT_DEGENERATE = 10.0


def importance_log_ratios(model, family, x: torch.Tensor, y: torch.Tensor, *, num_samples: int = 1000,
                          seed: int = 0, dataset_size: int | None = None) -> torch.Tensor:
    """``log p(y | x, z_s) + log p(z_s) - log q(z_s)`` for ``num_samples`` draws from q, in float64.

    ``dataset_size``: when ``x`` is a sample of that many rows, the likelihood is scaled up to them (N / n).
    The likelihood is evaluated in :func:`~models.objectives.row_chunks`: ``num_samples x rows`` within
    ``models.objectives.CHUNK_ELEMENTS`` (a network's hidden layer multiplies that again).
    """
    with torch.no_grad():
        generator = torch.Generator(device=family.precond_shift.device).manual_seed(seed)
        z = family.rsample(num_samples, generator=generator)
        log_q = family.log_prob(z).double()
        log_lik = torch.zeros(num_samples, dtype=torch.float64, device=z.device)
        for rows in row_chunks(x.shape[0], num_samples):
            log_lik += model.log_likelihood(z, x[rows], y[rows]).double().sum(-1)
        if dataset_size is not None:
            log_lik *= dataset_size / x.shape[0]
        return log_lik + model.log_prior(z).double() - log_q


def psis_khat(model, family, x: torch.Tensor, y: torch.Tensor, *, num_samples: int = 1000, seed: int = 0) -> float:
    """Pareto k-hat of the importance ratios p(y, z) / q(z), z ~ q."""
    return khat_from_log_ratios(importance_log_ratios(model, family, x, y, num_samples=num_samples, seed=seed))


@dataclass(frozen=True)
class ImportanceDiagnostics:
    """What one set of importance log-ratios ``log p(y, z_s) - log q(z_s)``, ``z_s ~ q``, says about q (nats).

    Attributes:
        elbo: their mean, the ELBO of q on these data.
        iwae: ``log mean_s exp(ratio_s)``, the importance-weighted bound (Burda et al. 2016); it rises towards
            log p(y) as the number of draws grows and is never below the ELBO.
        approximation_gap: ``iwae - elbo`` >= 0, an estimate (from below) of the gap log p(y) - ELBO =
            KL(q || posterior) that q leaves (Cremer, Li & Duvenaud 2018).
        khat: the PSIS k-hat.
    """

    elbo: float
    iwae: float
    approximation_gap: float
    khat: float


def importance_diagnostics(model, family, x: torch.Tensor, y: torch.Tensor, *, num_samples: int = 1000,
                           seed: int = 0, dataset_size: int | None = None) -> ImportanceDiagnostics:
    """ELBO, IWAE bound, approximation gap and PSIS k-hat from one set of ``num_samples`` draws of q (``dataset_size``:
    see :func:`importance_log_ratios`)."""
    log_ratios = importance_log_ratios(model, family, x, y, num_samples=num_samples, seed=seed,
                                       dataset_size=dataset_size)
    elbo = float(log_ratios.mean())
    iwae = float(torch.logsumexp(log_ratios, 0) - np.log(num_samples))
    return ImportanceDiagnostics(elbo, iwae, iwae - elbo, khat_from_log_ratios(log_ratios))


def khat_from_log_ratios(log_ratios: torch.Tensor) -> float:
    """PSIS k-hat of importance log-ratios (any shift); ``KHAT_DEGENERATE`` for degenerate weights."""
    from arviz_stats.base import array_stats

    log_ratios = log_ratios.detach().double().cpu().numpy()
    num_samples = log_ratios.size
    if num_samples < MIN_KHAT_SAMPLES:
        return float("nan")  # too few draws for a Pareto tail of 5 points
    if not np.isfinite(log_ratios).all():
        return KHAT_DEGENERATE
    log_ratios = log_ratios - log_ratios.max()
    tail = np.sort(log_ratios)[-int(np.ceil(min(0.2 * num_samples, 3 * np.sqrt(num_samples)))):]
    if tail[0] < _DEGENERATE_LOG_RATIO:
        # The tail weights span more orders of magnitude than a Pareto tail of any usable k does (and than the fit's
        # float64 arithmetic survives): a few draws carry all the weight, and q is far from the posterior, typically
        # much wider along a direction in which the posterior is thin.
        return KHAT_DEGENERATE
    if np.ptp(tail) < 1e-9:
        return 0.0  # constant weights: q is the posterior up to its normalising constant
    with np.errstate(divide="ignore", invalid="ignore"):
        # arviz-stats' psislw takes log-likelihood values (PSIS-LOO's ratios are their negatives): pass -log_ratios.
        _, khat = array_stats.psislw(-log_ratios, r_eff=1.0)
    khat = float(khat)
    return min(khat, KHAT_DEGENERATE) if np.isfinite(khat) else KHAT_DEGENERATE


#: Fewer draws than this leave too short a tail for the Pareto fit; k-hat is then NaN.
MIN_KHAT_SAMPLES = 25
#: The upper tail of the log-ratios spanning more than this many nats means degenerate weights (k-hat >> 1).
_DEGENERATE_LOG_RATIO = -100.0
