"""Drift of a window against the model's reference snapshot, with Evidently's data-drift calculation (the one behind
its DataDriftPreset): :class:`DriftCheck` compares the features and the champion's predictions. The preset's HTML
report is drawn only for the windows that write one.

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
    #: what :meth:`snapshot` runs Evidently's Report on: the sampled frames and the preset's options
    inputs: tuple = field(default=(), repr=False, compare=False)
    _snapshot: object = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict:
        return {"share": self.share, "drifted_count": self.drifted_count, "dataset_drift": self.dataset_drift,
                "drift_share": self.drift_share, "rows": self.rows,
                "columns": {name: c.to_json() for name, c in self.columns.items()}}

    def snapshot(self):
        """Evidently's Report (DataDriftPreset, with its tests) on the same rows and options: the snapshot behind the
        HTML report. Run on first use: Evidently draws every widget while it runs, which costs several times the
        tests themselves, so windows whose report nobody writes never pay for it."""
        if self._snapshot is None:
            from evidently import DataDefinition, Dataset, Report
            from evidently.presets import DataDriftPreset

            reference, current, options = self.inputs
            columns = list(current.columns)
            definition = DataDefinition(numerical_columns=columns)
            self._snapshot = Report([DataDriftPreset(columns=columns, **options)], include_tests=True).run(
                Dataset.from_pandas(current, data_definition=definition),
                Dataset.from_pandas(reference, data_definition=definition))
        return self._snapshot

    def save_html(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.snapshot().save_html(str(path))
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

    The verdicts come from ``get_drift_for_columns``, the calculation behind the DataDriftPreset's
    DriftedColumnsCount (its stattest choice, thresholds and share), called without the preset's widgets and
    with ``agg_data=False``: the verdicts do not depend on it, and the aggregated form bins every column over the
    row index for a plot nobody draws here (a third of the call). :meth:`DriftResult.snapshot` runs the preset
    itself for the HTML report.
    """
    from evidently.legacy.calculations.data_drift import get_drift_for_columns
    from evidently.legacy.metric_results import DatasetColumns, DatasetUtilityColumns
    from evidently.legacy.options.data_drift import DataDriftOptions

    reference = _capped(reference[columns], row_cap, seed)
    current = _capped(current[columns], row_cap, seed + 1)
    began = time.perf_counter()
    options = {k: v for k, v in (("method", method), ("threshold", threshold)) if v is not None}
    found = get_drift_for_columns(
        current_data=current, reference_data=reference, columns=list(columns), agg_data=False,
        data_drift_options=DataDriftOptions(drift_share=drift_share, all_features_stattest=method,
                                            all_features_threshold=threshold),
        dataset_columns=DatasetColumns(
            utility_columns=DatasetUtilityColumns(date=None, id=None, target=None, prediction=None),
            target_type=None, task=None, num_feature_names=list(columns), cat_feature_names=[],
            text_feature_names=[], datetime_feature_names=[], target_names=None))
    seconds = time.perf_counter() - began
    per_column = {
        name: ColumnDrift(column=name, method=drift.stattest_name, kind=statistic_kind(drift.stattest_name),
                          value=float(drift.drift_score), threshold=float(drift.stattest_threshold),
                          drifted=bool(drift.drift_detected))
        for name, drift in found.drift_by_columns.items()}
    return DriftResult(share=float(found.share_of_drifted_columns), drifted_count=int(found.number_of_drifted_columns),
                       dataset_drift=bool(found.dataset_drift), drift_share=drift_share, columns=per_column,
                       rows={"reference": len(reference), "current": len(current)}, seconds=seconds,
                       inputs=(reference, current, dict(options, drift_share=drift_share)))


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
