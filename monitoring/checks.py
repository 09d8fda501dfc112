"""The checks ``viops monitor`` runs on one window against the champion: each a spec plus a calculation.

Each check is a small object built from its section of ``configs/monitoring.yaml`` (its options as one object),
that says how much evidence it needs (``min_rows`` of what it reads) and computes a frozen result
(:mod:`monitoring.results`) with ``calculate(rows, champion)``. :func:`build_checks` lists the enabled ones and
``monitoring.monitor.check_window`` runs them through one loop over the rows it prepared once (:class:`WindowRows`).

- :class:`DriftCheck` runs Evidently on the features and on the predictions (:mod:`monitoring.drift`).
- :class:`CalibrationCheck` runs on labelled rows. Regression: 90%-interval coverage and PIT uniformity (K-S
  distance). Classifiers: ECE and Brier. Each also reports its change from the baseline.
- :class:`VIHealthCheck` compares the champion's ELBO per datum and predictive NLL on the window with the baseline
  (labelled rows only), together with a label-free uncertainty shift and single-row scoring latency. Regression
  uses the mean predictive SD; classifiers use mean entropy and epistemic mutual information. Amortized models add
  the amortization gap on a subsample.

:func:`check_inputs` runs first, on every row: missing columns are an error, NaN/inf values are counted, and only
finite rows are scored and passed on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from monitoring.champion import Champion, prediction_columns, uncertainty_summary
from monitoring.config import CalibrationCheckConfig, ChecksConfig, DriftCheckConfig, VIHealthConfig
from monitoring.drift import drift_check
from monitoring.results import (
    CalibrationDelta,
    CalibrationResult,
    DriftSummary,
    InputsResult,
    UncertaintyShift,
    VIHealthResult,
)
from pipelines.serving.predictive_metrics import predictive_metrics
from pipelines.tables import DataError

__all__ = ["WindowRows", "DriftCheck", "CalibrationCheck", "VIHealthCheck", "build_checks", "check_inputs"]


@dataclass(frozen=True)
class WindowRows:
    """What the checks read from one window, prepared once.

    Attributes:
        inputs: the row counts of :func:`check_inputs` (with the labelled-row counts).
        features: the finite rows' features (float64); sampled: at most ``row_cap`` of them (seeded).
        predictions: the champion's predictions for the finite rows.
        labelled: at most ``row_cap`` labelled rows (features and target), or None when labels cannot exist (no
            target column, or an amortized model).
    """

    inputs: InputsResult
    features: pd.DataFrame
    sampled: pd.DataFrame
    predictions: pd.DataFrame
    labelled: pd.DataFrame | None


def check_inputs(frame: pd.DataFrame, champion: Champion) -> tuple[InputsResult, np.ndarray]:
    """Missing columns are an error; NaN/inf values are counted. Returns ``(counts, mask of finite rows)``.

    Raises:
        DataError: the window lacks a feature column of the champion.
    """
    missing = [c for c in champion.features if c not in frame.columns]
    if missing:
        raise DataError(f"window lacks feature column(s) {missing} of {champion.loaded.ref}; it has "
                        f"{list(frame.columns)}")
    values = frame[champion.features].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(values)
    finite_rows = ~bad.any(axis=1)
    per_column = {c: int(n) for c, n in zip(champion.features, bad.sum(axis=0)) if n}
    counts = InputsResult(rows=int(len(frame)), finite_rows=int(finite_rows.sum()), nonfinite_values=int(bad.sum()),
                          nonfinite_fraction=float(bad.any(axis=1).mean()) if len(frame) else 0.0,
                          nonfinite_by_column=per_column)
    return counts, finite_rows


class DriftCheck:
    """Evidently drift of the finite features, and of the champion's predictions, against the reference."""

    name = "drift"

    def __init__(self, config: DriftCheckConfig, seed: int = 0):
        self.config, self.seed = config, seed
        self.min_rows = 1  # finite rows

    def calculate(self, rows: WindowRows, champion: Champion) -> DriftSummary | None:
        if len(rows.features) < self.min_rows:
            return None
        cfg = self.config
        options = dict(row_cap=cfg.row_cap, drift_share=cfg.drift_share, method=cfg.method, threshold=cfg.threshold,
                       seed=self.seed)
        features = drift_check(champion.reference, rows.features, champion.features, **options)
        seconds, on_predictions = features.seconds, None
        if cfg.predictions and len(rows.predictions):
            columns = prediction_columns(champion.kind, rows.predictions)
            predictions = drift_check(champion.reference_predictions, rows.predictions, columns, **options)
            on_predictions = DriftSummary.of(predictions)
            seconds += predictions.seconds
        return DriftSummary.of(features, seconds=seconds, predictions=on_predictions)


class CalibrationCheck:
    """Calibration of the champion on labelled finite rows, and its change from the held-out baseline."""

    name = "calibration"

    def __init__(self, config: CalibrationCheckConfig, seed: int = 0):
        self.config, self.seed = config, seed
        self.min_rows = config.min_rows  # labelled rows

    def calculate(self, rows: WindowRows, champion: Champion) -> CalibrationResult | None:
        labelled = rows.labelled
        if labelled is None:
            return None
        if champion.kind == "amortized":
            return CalibrationResult(status="not applicable: an amortized model predicts no labels")
        if len(labelled) < self.min_rows:
            return CalibrationResult(status=f"not enough labels: {len(labelled)} labelled rows, need {self.min_rows}",
                                     labelled_rows=len(labelled))
        metrics = predictive_metrics(champion.loaded.predictor, labelled, num_samples=self.config.predictive_samples,
                                     seed=self.seed)
        keys = ("ece", "brier", "accuracy") if champion.kind == "classification" else ("coverage_90", "coverage_50",
                                                                                       "pit_ks")
        delta = CalibrationDelta(**{k: metrics[k] - champion.baseline[k] for k in keys if k in champion.baseline})
        return CalibrationResult(status="measured", labelled_rows=len(labelled), delta=delta,
                                 **{k: metrics[k] for k in keys})


class VIHealthCheck:
    """ELBO and NLL vs baseline (labelled rows), NaN/inf inputs, uncertainty shift, latency, amortization gap."""

    name = "vi_health"

    def __init__(self, config: VIHealthConfig, seed: int = 0):
        self.config, self.seed = config, seed
        self.min_rows = 0  # NaN/inf counts and uncertainty need no labels; each measure is skipped without rows

    def calculate(self, rows: WindowRows, champion: Champion) -> VIHealthResult:
        cfg, features, labelled = self.config, rows.sampled, rows.labelled
        out: dict = {"nonfinite_values": rows.inputs.nonfinite_values,
                     "nonfinite_fraction": rows.inputs.nonfinite_fraction}
        labels_known = labelled is not None and len(labelled) > 0
        if champion.kind == "amortized" and len(features):
            labelled, labels_known = features, True  # the VAE's "label" is x itself
        if labels_known:
            metrics = predictive_metrics(champion.loaded.predictor, labelled, num_samples=cfg.predictive_samples,
                                         seed=self.seed)
            for key in ("elbo_per_datum", "nll"):
                if key in metrics:
                    out[key] = metrics[key]
                    if key in champion.baseline:
                        out[f"{key}_baseline"] = champion.baseline[key]
                        out[f"{key}_delta"] = metrics[key] - champion.baseline[key]
        if len(rows.predictions):
            now = uncertainty_summary(champion.kind, rows.predictions)
            base = champion.baseline_uncertainty
            out["uncertainty"] = {k: UncertaintyShift(v, base[k], v / base[k] if base[k] else None)
                                  for k, v in now.items()}
        if champion.kind == "amortized" and len(features):
            out.update(self._amortization(features, champion))
        if len(features):
            out["latency_p95_ms"] = self._latency_p95_ms(features, champion)
        return VIHealthResult(**out)

    def _amortization(self, features: pd.DataFrame, champion: Champion) -> dict:
        from models.amortized import amortization_gaps, collapse_statistics
        from pipelines.serving.predictive_metrics import bundle_tensors

        model = champion.loaded.predictor.model
        x, _ = bundle_tensors(champion.loaded.bundle, features.head(self.config.amortization_subsample))
        gaps = amortization_gaps(model, x, seed=self.seed)
        collapse = collapse_statistics(model, bundle_tensors(champion.loaded.bundle, features)[0])
        return {"amortization_gap": gaps.amortization_gap, "active_units": collapse.active_units,
                "active_unit_ratio": collapse.active_units / model.latent_dim}

    def _latency_p95_ms(self, features: pd.DataFrame, champion: Champion) -> float | None:
        times = []
        rows = features.head(self.config.latency_requests + 1)
        champion.loaded.pyfunc.predict(rows.iloc[[0]])  # warm-up
        for i in range(1, len(rows)):
            began = time.perf_counter()
            champion.loaded.pyfunc.predict(rows.iloc[[i]])
            times.append((time.perf_counter() - began) * 1000.0)
        return float(np.percentile(times, 95)) if times else None


def build_checks(config: ChecksConfig) -> list[DriftCheck | CalibrationCheck | VIHealthCheck]:
    """The enabled checks of ``config``, in the order they run."""
    checks = [DriftCheck(config.drift, config.seed), CalibrationCheck(config.calibration, config.seed),
              VIHealthCheck(config.vi_health, config.seed)]
    return [check for check in checks if check.config.enabled]
