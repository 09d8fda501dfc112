"""Drift of a window against the model's reference snapshot, with Evidently's DataDriftPreset: :class:`DriftCheck`
compares the features and the champion's predictions.

Evidently picks a test per column from the column type and the reference size. With at most 1,000 reference rows,
numerical columns get a K-S test and its **p-value** (drift when the p-value is *below* the threshold). With more
rows they get the normed Wasserstein **distance** (drift when the distance is *at or above* it). Each column's result
keeps the method, the value, its kind (``p_value`` or ``distance``), the threshold and Evidently's own verdict, so no
reader has to guess which way a number points. Windows and references above ``row_cap`` rows are sampled (seeded)
before the comparison.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from monitoring.checks.champion import Champion, prediction_columns
from monitoring.checks.config import DriftCheckConfig
from monitoring.checks.inputs import WindowRows
from monitoring.checks.results import ColumnDrift, DriftSummary, Evidence

__all__ = ["DriftCheck", "DriftResult", "drift_check", "statistic_kind"]


def statistic_kind(method: str) -> str:
    """``"p_value"`` for hypothesis tests (small = drift), ``"distance"`` for distances/divergences (large = drift)."""
    return "p_value" if "p_value" in method.lower() else "distance"


@dataclass
class DriftResult:
    """Evidently's drift verdict on a window.

    Attributes:
        share: share of compared columns that drifted (Evidently's DriftedColumnsCount).
        dataset_drift: ``share`` reached ``drift_share``.
        columns: per-column results.
        rows: rows compared ``{"reference": n, "current": m}`` after sampling.
        seconds: time spent in Evidently.
    """

    share: float
    drifted_count: int
    dataset_drift: bool
    drift_share: float
    columns: dict[str, ColumnDrift]
    rows: dict[str, int]
    seconds: float
    report: object = field(default=None, repr=False)  # the Evidently snapshot (save_html / json)

    def to_json(self) -> dict:
        return {"share": self.share, "drifted_count": self.drifted_count, "dataset_drift": self.dataset_drift,
                "drift_share": self.drift_share, "rows": self.rows,
                "columns": {name: c.to_json() for name, c in self.columns.items()}}

    def save_html(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.report.save_html(str(path))
        return path


def _capped(frame: pd.DataFrame, cap: int, seed: int) -> pd.DataFrame:
    return frame.sample(n=cap, random_state=seed) if len(frame) > cap else frame


def drift_check(reference: pd.DataFrame, current: pd.DataFrame, columns: list[str], *, row_cap: int = 100_000,
                drift_share: float = 0.5, method: str | None = None, threshold: float | None = None,
                seed: int = 0) -> DriftResult:
    """Compare ``columns`` of ``current`` with ``reference``; rows with missing values in a column are Evidently's
    to handle (it compares the non-missing ones). Both frames must hold every column.

    ``method``/``threshold`` override Evidently's per-column choice (e.g. ``"wasserstein"`` with 0.3). A distance
    does not grow with the sample size, so it suits windows resampled from a small pool, where a test's p-value
    flags the duplicates themselves.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    reference = _capped(reference[columns], row_cap, seed)
    current = _capped(current[columns], row_cap, seed + 1)
    definition = DataDefinition(numerical_columns=list(columns))
    began = time.perf_counter()
    options = {k: v for k, v in (("method", method), ("threshold", threshold)) if v is not None}
    preset = DataDriftPreset(columns=list(columns), drift_share=drift_share, **options)
    snapshot = Report([preset], include_tests=True).run(
        Dataset.from_pandas(current, data_definition=definition),
        Dataset.from_pandas(reference, data_definition=definition),
    )
    seconds = time.perf_counter() - began
    result = snapshot.dict()
    metrics = {m["id"]: m for m in result["metrics"]}
    verdicts = {t["metric_config"]["metric_id"]: t["status"] for t in result["tests"] if t.get("id") == "drift"}
    per_column: dict[str, ColumnDrift] = {}
    share, count = 0.0, 0
    for metric_id, metric in metrics.items():
        config = metric["config"]
        if config["type"].endswith("DriftedColumnsCount"):
            share, count = float(metric["value"]["share"]), int(metric["value"]["count"])
        elif config["type"].endswith("ValueDrift"):
            method = str(config["method"])
            per_column[config["column"]] = ColumnDrift(
                column=config["column"], method=method, kind=statistic_kind(method), value=float(metric["value"]),
                threshold=float(config["threshold"]), drifted=verdicts.get(metric_id) == "FAIL",
            )
    return DriftResult(share=share, drifted_count=count, dataset_drift=share >= drift_share, drift_share=drift_share,
                       columns=per_column, rows={"reference": len(reference), "current": len(current)},
                       seconds=seconds, report=snapshot)


class DriftCheck:
    """Evidently drift of the finite features, and of the champion's predictions, against the reference; with at
    least ``min_rows`` finite rows. Each feature's verdict is weighted by the champion's sensitivity to it."""

    name = "drift"

    def __init__(self, config: DriftCheckConfig, seed: int = 0):
        self.config, self.seed = config, seed
        self.min_rows = config.min_rows  # finite rows

    def evidence(self, rows: WindowRows, champion: Champion) -> dict[str, Evidence]:
        return {"drift": Evidence(len(rows.features), self.min_rows)}

    def calculate(self, rows: WindowRows, champion: Champion) -> DriftSummary | None:
        if not self.evidence(rows, champion)["drift"].enough:
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
        return DriftSummary.of(features, seconds=seconds, predictions=on_predictions, weights=champion.feature_weights)
