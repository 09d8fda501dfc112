"""The plots of a training run (headless matplotlib): ELBO curve, PIT histogram, reliability diagram, inference gaps."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

__all__ = ["plot_elbo_curve", "plot_pit_histogram", "plot_reliability_diagram", "plot_amortization_gaps"]


@contextlib.contextmanager
def _figure(path: Path, title: str, xlabel: str, ylabel: str, legend_loc: str, size=(7, 4)):
    """A matplotlib axes (headless backend) that is labelled, saved to ``path`` and closed on exit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size, dpi=100)
    try:
        yield ax
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(loc=legend_loc)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)


def plot_elbo_curve(history: list[tuple[int, float]], path: Path, title: str) -> Path:
    """Per-step ELBO with a moving average, saved as PNG."""
    with _figure(path, title, "step", "ELBO (nats, full-data estimate)", "lower right") as ax:
        if history:
            steps, values = np.array(history).T
            ax.plot(steps, values, lw=0.6, alpha=0.4, label="ELBO (per step)")
            window = max(1, len(values) // 50)
            if window > 1:
                smooth = np.convolve(values, np.ones(window) / window, mode="valid")
                ax.plot(steps[window - 1 :], smooth, lw=1.5, label=f"moving average ({window} steps)")
            lo, hi = np.percentile(values, [5, 100])
            ax.set_ylim(lo - 0.05 * abs(hi - lo), hi + 0.05 * abs(hi - lo))
    return path


def plot_pit_histogram(pit: np.ndarray, path: Path, title: str, bins: int = 20) -> Path:
    """Histogram of PIT values with the uniform density a calibrated predictive would give, saved as PNG.

    A U shape means over-confident predictive intervals, a hump under-confident ones, a slope a biased mean.
    """
    with _figure(path, title, "PIT = predictive CDF at the observed y", "density", "lower center", (6, 4)) as ax:
        ax.hist(pit, bins=bins, range=(0.0, 1.0), density=True, alpha=0.7, label=f"{len(pit)} held-out rows")
        ax.axhline(1.0, color="black", lw=1.0, ls="--", label="calibrated (uniform)")
    return path


def plot_reliability_diagram(calibration, path: Path, title: str) -> Path:
    """Accuracy against confidence per bin (the reliability diagram), with the diagonal of perfect calibration.

    Bars below the diagonal: over-confident predictions; above: under-confident ones.
    """
    bins = len(calibration.bin_count)
    edges = np.linspace(0.0, 1.0, bins + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    filled = calibration.bin_count.numpy() > 0
    with _figure(path, f"{title} (ECE {calibration.ece:.3f})", "confidence (top-class probability)", "accuracy",
                 "upper left", (5, 5)) as ax:
        ax.bar(centres[filled], calibration.bin_accuracy.numpy()[filled], width=1.0 / bins, alpha=0.7,
               edgecolor="black", label="accuracy in bin")
        ax.plot(calibration.bin_confidence.numpy()[filled], calibration.bin_accuracy.numpy()[filled], "o", ms=3,
                color="C3", label="mean confidence in bin")
        ax.plot([0, 1], [0, 1], color="black", lw=1.0, ls="--", label="calibrated")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    return path


def plot_amortization_gaps(history: list[tuple[int, dict[str, float]]], path: Path, title: str) -> Path:
    """The amortization and approximation gaps over training (nats per datum), saved as PNG."""
    with _figure(path, title, "step", "gap (nats per datum)", "upper right") as ax:
        steps = [step for step, _ in history]
        for key, label in (("amortization/amortization_gap", "amortization gap  L[q*] - L[q]"),
                           ("amortization/approximation_gap", "approximation gap  log p(x) - L[q*]")):
            ax.plot(steps, [values[key] for _, values in history], marker="o", ms=3, label=label)
        ax.axhline(0.0, color="black", lw=0.8)
    return path
