"""Calibration of the champion on a window's labelled rows. Regression: 90%-interval coverage and PIT uniformity
(K-S distance). Classifiers: ECE and Brier. Each also reports its change from the champion's held-out baseline."""

from __future__ import annotations

from monitoring.checks.champion import Champion
from monitoring.checks.config import CalibrationCheckConfig
from monitoring.checks.inputs import WindowRows
from monitoring.checks.results import CalibrationDelta, CalibrationResult, Evidence
from pipelines.serving.predictive_metrics import predictive_metrics

__all__ = ["CalibrationCheck"]


class CalibrationCheck:
    """Calibration of the champion on labelled finite rows, and its change from the held-out baseline."""

    name = "calibration"

    def __init__(self, config: CalibrationCheckConfig, seed: int = 0):
        self.config, self.seed = config, seed
        self.min_rows = config.min_rows  # labelled rows

    def evidence(self, rows: WindowRows, champion: Champion) -> dict[str, Evidence]:
        if rows.labelled is None or champion.kind == "amortized":
            return {}
        return {"calibration": Evidence(len(rows.labelled), self.min_rows)}

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
