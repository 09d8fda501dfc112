"""Held-out evaluation of a trained global-latent model: tensors of a split, fit, calibration and its plots.

Everything here runs on the final (averaged) posterior after training, on CPU, with seeded generators.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from models.calibration import classification_calibration, regression_calibration
from models.objectives import held_out_fit
from pipelines.training.data import PreparedData

__all__ = ["split_tensors", "seeded_rows", "standardization", "held_out_metrics", "calibration_metrics"]


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


def seeded_rows(xy: tuple[torch.Tensor, torch.Tensor], limit: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All rows of ``xy`` up to ``limit`` (the tensors themselves), else a sample of ``limit`` distinct rows drawn
    with ``seed``, in table order and paired with their targets: the same rows for the same table and seed."""
    x, y = xy
    if x.shape[0] <= limit:
        return x, y
    keep = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:limit].sort().values
    keep = keep.to(x.device)
    return x[keep], y[keep]


def standardization(data: PreparedData, *, classify: bool = False) -> dict:
    """Feature means and SDs of the training split, and (regression) the target's; class labels stay as they are."""
    if data.stream is not None:
        return data.stream.standardization(classify)
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
    generator = torch.Generator().manual_seed(settings.seed + 1)
    for split in ("validation", "test"):
        frame = getattr(data, split)
        if not len(frame):
            continue
        x, y = split_tensors(frame, data.features, data.target, stats, classify=model.task == "classification")
        fit = held_out_fit(model, family, x, y, train_size=data.train_rows, num_samples=settings.eval_particles,
                           generator=generator)
        out[f"{split}_elbo_per_datum"] = float(fit.elbo_per_datum)
        out[f"{split}_predictive_nll"] = float(fit.predictive_nll)
    return out


def calibration_metrics(model, family, data: PreparedData, stats, settings, plot_dir: Path, title: str
                        ) -> tuple[dict[str, float], Path | None]:
    """Calibration of the posterior predictive on the test split (else validation) and its plot.

    Regression: ``coverage_50``, ``coverage_90`` and ``pit_ks`` with a PIT histogram. Classification: ``ece``,
    ``accuracy`` and ``brier`` with a reliability diagram. Returns ``({}, None)`` without held-out rows.
    """
    from pipelines.training.plots import plot_pit_histogram, plot_reliability_diagram

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
