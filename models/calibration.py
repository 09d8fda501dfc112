"""Calibration of a posterior predictive on held-out rows: PIT and interval coverage (regression), ECE, Brier score
and a reliability table (classification).

The expected calibration error is torchmetrics' (top-label, equal-width bins, L1): the gap between confidence and
accuracy, averaged over bins weighted by their share of rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from models.objectives import row_chunks
from models.predictive import class_predictive

__all__ = ["RegressionCalibration", "regression_calibration", "ClassificationCalibration",
           "classification_calibration"]


@dataclass(frozen=True)
class RegressionCalibration:
    """Calibration of a regression posterior predictive on held-out rows.

    Attributes:
        pit: probability integral transform per row, ``F(y_i | x_i, data)`` with ``F`` the posterior predictive CDF
            (a mixture over posterior draws); uniform on [0, 1] when the predictive is calibrated.
        coverage: ``{level: fraction of rows inside the central level-interval}``, e.g. ``{0.5: 0.49, 0.9: 0.91}``.
        pit_ks: Kolmogorov-Smirnov distance of the PIT values from the uniform distribution.
    """

    pit: torch.Tensor
    coverage: dict[float, float]
    pit_ks: float


def regression_calibration(model, family, x: torch.Tensor, y: torch.Tensor, *, num_samples: int = 1000,
                           levels: tuple[float, ...] = (0.5, 0.9), seed: int = 0) -> RegressionCalibration:
    """PIT values and central-interval coverage of the posterior predictive ``E_q[p(y | x, z)]`` on ``(x, y)``.

    Uses the predictive CDF exactly given the draws (``mean_s F(y | x, z_s)``), so there is no sampling noise in y;
    row ``i`` lies inside the central ``L`` interval exactly when ``|PIT_i - 1/2| <= L / 2``.
    """
    with torch.no_grad():
        generator = torch.Generator(device=x.device).manual_seed(seed)
        noise = torch.randn((num_samples, family.noise_dim), generator=generator, device=x.device, dtype=x.dtype)
        z = family.transform_noise(noise)
        pit = torch.cat([model.predictive(z, x[rows]).cdf(y[rows]).mean(0)
                         for rows in row_chunks(len(x), num_samples)]).clamp(0.0, 1.0).cpu()
    coverage = {level: float(((pit - 0.5).abs() <= level / 2).double().mean()) for level in levels}
    ordered = pit.double().sort().values
    n = ordered.numel()
    grid = torch.arange(1, n + 1, dtype=torch.float64) / n
    ks = float(torch.maximum((grid - ordered).abs(), (ordered - (grid - 1.0 / n)).abs()).max())
    return RegressionCalibration(pit, coverage, ks)


@dataclass(frozen=True)
class ClassificationCalibration:
    """Calibration of a classifier's posterior predictive ``p(y | x, data) = E_q[p(y | x, z)]`` on held-out rows.

    Attributes:
        ece: expected calibration error (top label, ``bins`` equal-width confidence bins), in [0, 1].
        accuracy: share of rows whose most probable class is the label.
        brier: mean over rows of ``sum_c (p_c - [y = c])^2``, in [0, 2].
        bin_confidence, bin_accuracy, bin_count: the reliability table, per bin (``NaN`` where a bin is empty).
    """

    ece: float
    accuracy: float
    brier: float
    bin_confidence: torch.Tensor
    bin_accuracy: torch.Tensor
    bin_count: torch.Tensor


def classification_calibration(model, family, x: torch.Tensor, y: torch.Tensor, *, num_samples: int = 1000,
                               bins: int = 15, seed: int = 0) -> ClassificationCalibration:
    """ECE (torchmetrics), accuracy, Brier score and the reliability table of the posterior predictive on ``(x, y)``."""
    from torchmetrics.functional.classification import multiclass_calibration_error

    generator = torch.Generator(device=x.device).manual_seed(seed)
    probs = class_predictive(model, family, x, num_samples=num_samples, generator=generator).probs.cpu().double()
    labels = y.long().cpu()
    num_classes = probs.shape[-1]
    ece = float(multiclass_calibration_error(probs, labels, num_classes=num_classes, n_bins=bins, norm="l1"))
    confidence, predicted = probs.max(-1)
    correct = (predicted == labels).double()
    brier = float((probs - torch.nn.functional.one_hot(labels, num_classes).double()).square().sum(-1).mean())
    which = torch.clamp((confidence * bins).long(), max=bins - 1)
    count = torch.bincount(which, minlength=bins).double()
    with torch.no_grad():
        bin_conf = torch.bincount(which, weights=confidence, minlength=bins) / count
        bin_acc = torch.bincount(which, weights=correct, minlength=bins) / count
    return ClassificationCalibration(ece, float(correct.mean()), brier, bin_conf, bin_acc, count)
