"""Held-out evaluation of a trained global-latent model: tensors of a split, fit, calibration and its plots.

Everything here runs on the final (averaged) posterior after training, on CPU, with fixed seeds.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from models.calibration import classification_calibration, regression_calibration
from models.objectives import held_out_fit
from pipelines.data import PreparedData

__all__ = [
    "split_tensors", "standardization", "held_out_metrics", "calibration_metrics", "bundle_tensors", "predictive_metrics",
]


def split_tensors(frame, features, target, stats, *, classify: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` of one split: float32 features (standardised with ``stats``), and float32 targets (standardised)
    or int64 class indices."""
    x = frame[list(features)].to_numpy(dtype=np.float32)
    if stats is not None:
        x = (x - stats["feature_mean"]) / stats["feature_scale"]
    if classify:
        return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(frame[target].to_numpy(dtype=np.int64))
    y = frame[target].to_numpy(dtype=np.float32)
    if stats is not None:
        y = (y - stats["target_mean"]) / stats["target_scale"]
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y))


def standardization(data: PreparedData, *, classify: bool = False) -> dict:
    """Feature means and SDs of the training split, and (regression) the target's; class labels stay as they are."""
    x = data.train[list(data.features)].to_numpy(dtype=np.float64)
    scale = x.std(0)
    stats = {
        "feature_mean": x.mean(0).astype(np.float32),
        "feature_scale": np.where(scale > 0, scale, 1.0).astype(np.float32),
        "target_mean": 0.0,
        "target_scale": 1.0,
    }
    if not classify:
        y = data.train[data.target].to_numpy(dtype=np.float64)
        stats.update(target_mean=float(y.mean()), target_scale=float(y.std()) or 1.0)
    return stats


def held_out_metrics(model, family, data: PreparedData, stats, settings) -> dict[str, float]:
    """Validation and test ELBO per datum and predictive NLL of the final posterior."""
    model, family = model.to("cpu"), family.to("cpu")
    out: dict[str, float] = {}
    torch.manual_seed(settings.seed + 1)
    for split in ("validation", "test"):
        frame = getattr(data, split)
        if not len(frame):
            continue
        x, y = split_tensors(frame, data.features, data.target, stats, classify=model.task == "classification")
        fit = held_out_fit(model, family, x, y, train_size=len(data.train), num_samples=settings.eval_particles)
        out[f"{split}_elbo_per_datum"] = float(fit.elbo_per_datum)
        out[f"{split}_predictive_nll"] = float(fit.predictive_nll)
    return out


def calibration_metrics(model, family, data: PreparedData, stats, settings, plot_dir: Path, title: str
                        ) -> tuple[dict[str, float], Path | None]:
    """Calibration of the posterior predictive on the test split (else validation) and its plot.

    Regression: ``coverage_50``, ``coverage_90`` and ``pit_ks`` with a PIT histogram. Classification: ``ece``,
    ``accuracy`` and ``brier`` with a reliability diagram. Returns ``({}, None)`` without held-out rows.
    """
    from pipelines.artifacts import plot_pit_histogram, plot_reliability_diagram

    frame = data.test if len(data.test) else data.validation
    if not len(frame):
        return {}, None
    classify = model.task == "classification"
    x, y = split_tensors(frame, data.features, data.target, stats, classify=classify)
    model, family = model.to("cpu"), family.to("cpu")
    samples = settings.eval_particles * 4
    if classify:
        result = classification_calibration(model, family, x, y, num_samples=samples, seed=settings.seed)
        path = plot_reliability_diagram(result, plot_dir / "reliability_diagram.png", f"{title}: reliability")
        return {"ece": result.ece, "accuracy": result.accuracy, "brier": result.brier}, path
    result = regression_calibration(model, family, x, y, num_samples=samples, seed=settings.seed)
    metrics = {f"coverage_{round(level * 100)}": value for level, value in result.coverage.items()}
    metrics["pit_ks"] = result.pit_ks
    path = plot_pit_histogram(result.pit.numpy(), plot_dir / "pit_histogram.png", f"{title}: PIT of held-out rows")
    return metrics, path


# --- a registered version on new rows (the gate, monitoring) ---------------------------------------------------------


def bundle_tensors(bundle, frame) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(x, y)`` of ``frame`` prepared as the version in ``bundle`` was trained: standardised features, and the
    standardised target (regression), class indices (classifiers), or None (no target column, or the VAE)."""
    x = frame[bundle.features].to_numpy(dtype=np.float32)
    if bundle.feature_mean:
        x = (x - np.asarray(bundle.feature_mean, dtype=np.float32)) / np.asarray(bundle.feature_scale, dtype=np.float32)
    x = torch.from_numpy(np.ascontiguousarray(x))
    if bundle.target not in frame.columns or bundle.model_config.get("kind") == "vae":
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
    from models.calibration import classification_calibration, regression_calibration
    from models.objectives import held_out_fit

    b, model, family = predictor.bundle, predictor.model, predictor.family
    x, y = bundle_tensors(b, frame)
    out: dict[str, float] = {}
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        if family is None:
            out["nll"] = float(-iwae_bound(model, x, num_samples).mean())
            out["elbo_per_datum"] = float(amortized_bound(model, x, num_samples=16).elbo)
            return out
        # standardised-scale log densities + log(scale) are the densities of y in its own units
        shift = math.log(b.target_scale) if b.num_classes is None else 0.0
        fit = held_out_fit(model, family, x, y, train_size=max(b.train_rows, 1), num_samples=num_samples)
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
