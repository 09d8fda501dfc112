"""One window through every check: inputs, scoring (when the window is not scored yet), drift, calibration, VI health.

:func:`check_window` is what ``viops monitor`` runs per window (SLO evaluation and the decision build on its
report). Rows with NaN/inf features are counted and left out of scoring and of every statistic; rows whose label is
missing, non-finite or not a class the model knows are left out of calibration and of the ELBO/NLL.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from monitoring.checks import Champion, check_calibration, check_drift, check_inputs, check_vi_health
from monitoring.config import ChecksConfig
from pipelines.scoring import score_frame

__all__ = ["WindowReport", "check_window", "score_window"]


@dataclass
class WindowReport:
    window: str
    model: str
    version: str
    inputs: dict
    drift: dict | None
    calibration: dict | None
    vi_health: dict | None
    scoring: dict
    champion: dict | None = None
    drift_result: object = None  # the Evidently result of the feature drift (its HTML report)

    def to_json(self) -> dict:
        return {"window": self.window, "model": self.model, "version": self.version, "inputs": self.inputs,
                "drift": self.drift, "calibration": self.calibration, "vi_health": self.vi_health,
                "scoring": self.scoring, "champion": self.champion}


def score_window(frame: pd.DataFrame, finite: np.ndarray, champion: Champion) -> tuple[pd.DataFrame, dict]:
    """The champion's predictions for the finite rows: those already in the window when it carries a complete set,
    else scored now. Returns ``(predictions indexed like the finite rows, scoring summary)``."""
    columns = list(champion.reference_predictions.columns)
    rows = frame.loc[finite]
    if all(c in frame.columns for c in columns) and np.isfinite(rows[columns].to_numpy(dtype=float)).all():
        return rows[columns], {"scored_now": 0, "version": "as stored in the window"}
    features = rows[champion.features].astype("float64")
    predictions, seconds = score_frame(champion.loaded, features)
    predictions.index = rows.index
    latency = [s * 1000.0 for s in seconds]
    return predictions, {"scored_now": int(len(rows)), "version": champion.loaded.version,
                         "batch_latency_p95_ms": float(np.percentile(latency, 95)) if latency else None}


def _labelled(frame: pd.DataFrame, finite: np.ndarray, champion: Champion) -> tuple[pd.DataFrame | None, int]:
    target = champion.target
    if champion.kind == "amortized" or target not in frame.columns:
        return None, 0
    rows = frame.loc[finite]
    labels = pd.to_numeric(rows[target], errors="coerce").to_numpy(dtype=float)
    ok = np.isfinite(labels)
    invalid = 0
    if champion.kind == "classification":
        known = ok & (labels == np.round(labels)) & (labels >= 0) & (labels < champion.loaded.bundle.num_classes)
        invalid = int((ok & ~known).sum())
        ok = known
    labelled = rows.loc[ok, [*champion.features, target]].astype("float64")
    return labelled, invalid


def check_window(frame: pd.DataFrame, champion: Champion, checks: ChecksConfig, *, window: str = "") -> WindowReport:
    """Run every enabled check on ``frame`` against ``champion``."""
    inputs, finite = check_inputs(frame, champion)
    predictions, scoring = score_window(frame, finite, champion) if finite.any() else (pd.DataFrame(), {})
    features = frame.loc[finite, champion.features].astype("float64")
    labelled, invalid = _labelled(frame, finite, champion)
    inputs["labelled_rows"] = 0 if labelled is None else int(len(labelled))
    inputs["invalid_labels"] = invalid
    drift, drift_result = (None, None)
    if checks.drift.enabled and len(features):
        drift, drift_result = check_drift(features, predictions, champion, checks.drift, checks.seed)
    calibration = None
    if checks.calibration.enabled and labelled is not None:
        calibration = check_calibration(labelled, champion, checks.calibration, checks.seed)
    vi_health = None
    if checks.vi_health.enabled:
        vi_health = check_vi_health(inputs, labelled, predictions, champion, checks.vi_health, checks.seed,
                                    features=features)
    about = {"version": champion.loaded.version, "promoted_at_seconds": champion.promoted_at}
    return WindowReport(window, champion.loaded.name, champion.loaded.version, inputs, drift, calibration, vi_health,
                        scoring, about, drift_result)
