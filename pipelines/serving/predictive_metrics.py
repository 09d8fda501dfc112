"""A registered version's fit and calibration on labelled rows, in the data's units: what the gate and monitoring
share, so a window and a held-out baseline are measured by the same code.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from models.calibration import classification_calibration, regression_calibration
from models.objectives import held_out_fit

__all__ = ["bundle_tensors", "predictive_metrics", "pointwise_nll"]


def bundle_tensors(bundle, frame) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(x, y)`` of ``frame`` prepared as the version in ``bundle`` was trained: standardised features, and the
    standardised target (regression), class indices (classifiers), or None (no target column, or the VAE)."""
    x = frame[bundle.features].to_numpy(dtype=np.float32)
    if bundle.feature_mean:
        x = (x - np.asarray(bundle.feature_mean, dtype=np.float32)) / np.asarray(bundle.feature_scale, dtype=np.float32)
    x = torch.from_numpy(np.ascontiguousarray(x))
    if bundle.target not in frame.columns or not bundle.task.has_target:
        return x, None
    if bundle.num_classes is not None:
        return x, torch.from_numpy(frame[bundle.target].to_numpy(dtype=np.int64))
    y = (frame[bundle.target].to_numpy(dtype=np.float32) - bundle.target_mean) / bundle.target_scale
    return x, torch.from_numpy(np.ascontiguousarray(y.astype(np.float32)))


def predictive_metrics(predictor, frame, *, num_samples: int = 256, seed: int = 0) -> dict[str, float]:
    """Fit and calibration of a loaded version (``predictor``: ``bundle``, ``model``, ``family``) on labelled rows.

    All in the data's own units, so versions trained on differently standardised data compare:

    - ``nll``: predictive NLL per datum, ``-log (1/S) sum_s p(y | x, z_s)`` (VAE: ``-log p̂(x)``, IWAE);
    - ``elbo_per_datum``: E_q[log p(y | x, z)] - KL(q || p) / N_train (VAE: the amortized ELBO);
    - regression: ``coverage_50``, ``coverage_90``, ``pit_ks``; classifiers: ``ece``, ``accuracy``, ``brier``.

    ``frame`` must be valid (columns present, finite). Draws are seeded; the global RNG is left as it was.
    """
    from models.amortized import amortized_bound, iwae_bound

    b, model, family = predictor.bundle, predictor.model, predictor.family
    x, y = bundle_tensors(b, frame)
    out: dict[str, float] = {}
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if family is None:
            out["nll"] = float(-iwae_bound(model, x, num_samples, generator=generator).mean())
            out["elbo_per_datum"] = float(amortized_bound(model, x, num_samples=16, generator=generator).elbo)
            return out
        # standardised-scale log densities + log(scale) are the densities of y in its own units
        shift = math.log(b.target_scale) if b.num_classes is None else 0.0
        fit = held_out_fit(model, family, x, y, train_size=max(b.train_rows, 1), num_samples=num_samples,
                           generator=generator)
        out["nll"] = float(fit.predictive_nll) + shift
        if b.train_rows:
            out["elbo_per_datum"] = float(fit.elbo_per_datum) - shift
        if b.num_classes is not None:
            cal = classification_calibration(model, family, x, y, num_samples=num_samples, seed=seed)
            out.update(ece=cal.ece, accuracy=cal.accuracy, brier=cal.brier)
        else:
            cal = regression_calibration(model, family, x, y, num_samples=num_samples, seed=seed)
            out.update(coverage_50=cal.coverage[0.5], coverage_90=cal.coverage[0.9], pit_ks=cal.pit_ks)
    return out


def pointwise_nll(predictor, frame, *, num_samples: int = 256, seed: int = 0) -> np.ndarray:
    """Each labelled row's predictive NLL in the data's units, ``-log (1/S) sum_s p(y_i | x_i, z_s)`` (VAE:
    ``-log p̂(x_i)``, IWAE): the per-row terms whose mean is :func:`predictive_metrics`' ``nll``, for paired comparisons
    of two versions on the same rows. Draws are seeded."""
    from models.amortized import iwae_bound

    b, model, family = predictor.bundle, predictor.model, predictor.family
    x, y = bundle_tensors(b, frame)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if family is None:
            return (-iwae_bound(model, x, num_samples, generator=generator)).numpy().astype(np.float64)
        shift = math.log(b.target_scale) if b.num_classes is None else 0.0
        log_lik = model.log_likelihood(family.rsample(num_samples, generator=generator), x, y)
        nll = -(torch.logsumexp(log_lik, dim=0) - math.log(num_samples)) + shift
    return nll.numpy().astype(np.float64)
