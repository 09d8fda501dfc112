"""What the window checks return: frozen dataclasses with documented fields (:mod:`monitoring.checks.indicators`
reads an indicator from them by its dotted path).

``to_json()`` of each result leaves out fields that were not measured, so the ``--json`` output of
``viops monitor`` keeps exactly the keys it always had.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "ColumnDrift", "InputsResult", "DriftSummary", "CalibrationDelta", "CalibrationResult", "UncertaintyShift",
    "VIHealthResult", "ChampionInfo", "Evidence", "WindowReport",
]


def _json(value):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return value.to_json() if hasattr(value, "to_json") else {
            f.name: _json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k: _json(v) for k, v in value.items()}
    return value


class _Result:
    """``to_json``: every field that holds a value (None means "not measured on this window")."""

    def to_json(self) -> dict:
        return {f.name: _json(getattr(self, f.name)) for f in dataclasses.fields(self)
                if getattr(self, f.name) is not None and f.metadata.get("json", True)}


@dataclass(frozen=True)
class ColumnDrift:
    """Evidently's verdict on one column: the method, whether its value is a ``p_value`` (small = drift) or a
    ``distance`` (large = drift), the threshold, and whether the column drifted."""

    column: str
    method: str
    kind: str  # "p_value" or "distance"
    value: float
    threshold: float
    drifted: bool
    weight: float | None = None  # the champion's sensitivity to the column, as a share of all (features only)

    def to_json(self) -> dict:
        out = {"method": self.method, "kind": self.kind, "value": self.value, "threshold": self.threshold,
               "drifted": self.drifted}
        return out if self.weight is None else {**out, "weight": self.weight}


@dataclass(frozen=True)
class InputsResult(_Result):
    """Rows of the window and their validity.

    Attributes:
        rows: rows in the window; finite_rows: those whose features are all finite (only these are scored).
        nonfinite_values: NaN/inf feature values; nonfinite_fraction: share of rows with at least one.
        nonfinite_by_column: NaN/inf count per feature that has any.
        schema_problems: ``{column: problem}`` for each feature whose values do not match the training schema: a
            non-numeric dtype or cell (bool, str, object), or a value beyond the reference's bound (±1e6 SDs);
            those values count as invalid (their rows are not scored); schema_violations: how many such columns.
        labelled_rows: finite rows with a usable label; invalid_labels: finite labels that are not a known class.
        usual_rows: the rows a window usually has (configured, or the median of the last windows that had rows);
        volume_ratio: ``rows / usual_rows`` (0.0 for an empty window even without a usual volume).
    """

    rows: int
    finite_rows: int
    nonfinite_values: int
    nonfinite_fraction: float
    nonfinite_by_column: dict[str, int]
    labelled_rows: int = 0
    invalid_labels: int = 0
    usual_rows: float | None = None
    volume_ratio: float | None = None
    schema_problems: dict[str, str] = field(default_factory=dict)

    @property
    def schema_violations(self) -> int:
        return len(self.schema_problems)

    def to_json(self) -> dict:
        return {**super().to_json(), "schema_violations": self.schema_violations}


@dataclass(frozen=True)
class DriftSummary(_Result):
    """Evidently drift of the window's features (and, in ``predictions``, of the champion's predictions).

    Attributes:
        share: share of compared columns that drifted; drifted_count: how many.
        weighted_share: the champion's sensitivity carried by the drifted columns (weights sum to 1 over the
            features), i.e. the drift mass of what the model uses; weighted_distance: the sensitivity-weighted mean of
            the columns' distances (distance methods only).
        cusum: the one-sided CUSUM of ``weighted_distance`` over the windows this champion has watched
            (accumulated slow drift; docs/monitoring.md#slow-drift).
        dataset_drift: ``share`` reached ``drift_share`` (Evidently's flag).
        rows: rows compared ``{"reference": n, "current": m}`` after sampling.
        columns: per-column method, statistic kind (p-value or distance), value, threshold and verdict.
        seconds: time in Evidently (features and predictions together, on the feature summary).
        predictions: the same summary for the prediction columns, or None when not compared.
    """

    share: float
    drifted_count: int
    dataset_drift: bool
    drift_share: float
    rows: dict[str, int]
    columns: dict[str, ColumnDrift]
    seconds: float | None = None
    predictions: DriftSummary | None = None
    weighted_share: float | None = None
    weighted_distance: float | None = None
    cusum: float | None = None
    #: The Evidently result of the feature drift (its HTML report goes with the incident); not in the JSON.
    evidently: object = field(default=None, repr=False, compare=False, metadata={"json": False})

    @classmethod
    def of(cls, result, *, seconds: float | None = None, predictions: DriftSummary | None = None,
           weights: Mapping[str, float] | None = None) -> DriftSummary:
        """From a :class:`monitoring.checks.drift.DriftResult`; with ``weights`` (feature -> share of the champion's
        sensitivity), also the weighted share and distance."""
        columns = dict(result.columns)
        weighted_share = weighted_distance = None
        if weights:
            columns = {name: dataclasses.replace(c, weight=float(weights.get(name, 0.0)))
                       for name, c in columns.items()}
            total = sum(c.weight for c in columns.values()) or 1.0
            weighted_share = sum(c.weight for c in columns.values() if c.drifted) / total
            if all(c.kind == "distance" for c in columns.values()):
                weighted_distance = sum(c.weight * c.value for c in columns.values()) / total
        return cls(result.share, result.drifted_count, result.dataset_drift, result.drift_share, dict(result.rows),
                   columns, seconds, predictions, weighted_share, weighted_distance, None, result)


@dataclass(frozen=True)
class CalibrationDelta(_Result):
    """A calibration measure on the window minus the same measure on the champion's held-out split."""

    coverage_90: float | None = None
    coverage_50: float | None = None
    pit_ks: float | None = None
    ece: float | None = None
    brier: float | None = None
    accuracy: float | None = None


@dataclass(frozen=True)
class CalibrationResult(_Result):
    """Calibration of the champion on the window's labelled rows.

    Attributes:
        status: ``measured``, ``not enough labels: ...`` or ``not applicable: ...``.
        labelled_rows: rows it was measured on (None when not applicable).
        coverage_90, coverage_50, pit_ks: regression; ece, brier, accuracy: classifiers.
        delta: each measure minus the champion's held-out baseline.
    """

    status: str
    labelled_rows: int | None = None
    coverage_90: float | None = None
    coverage_50: float | None = None
    pit_ks: float | None = None
    ece: float | None = None
    brier: float | None = None
    accuracy: float | None = None
    delta: CalibrationDelta | None = None


@dataclass(frozen=True)
class UncertaintyShift(_Result):
    """A label-free uncertainty summary on the window against the same summary on the reference snapshot."""

    window: float
    baseline: float
    ratio: float | None


@dataclass(frozen=True)
class VIHealthResult(_Result):
    """The champion's variational fit on the window.

    Attributes:
        nonfinite_values, nonfinite_fraction: NaN/inf inputs (as in :class:`InputsResult`).
        elbo_per_datum, nll: on labelled rows (the VAE: on its features), with their held-out ``*_baseline`` and
            ``*_delta`` (window minus baseline).
        uncertainty: mean predictive SD (regression), mean entropy and mutual information (classifiers), or mean
            log-marginal and posterior SD (VAE), each against the reference snapshot.
        amortization_gap, active_units, active_unit_ratio: amortized models, on a subsample.
        latency_p95_ms, latency_p99_ms: p95 and p99 of single-row predict calls.
    """

    nonfinite_values: int
    nonfinite_fraction: float
    elbo_per_datum: float | None = None
    elbo_per_datum_baseline: float | None = None
    elbo_per_datum_delta: float | None = None
    nll: float | None = None
    nll_baseline: float | None = None
    nll_delta: float | None = None
    uncertainty: dict[str, UncertaintyShift] | None = None
    amortization_gap: float | None = None
    active_units: int | None = None
    active_unit_ratio: float | None = None
    latency_p95_ms: float | None = None
    latency_p99_ms: float | None = None


@dataclass(frozen=True)
class ChampionInfo(_Result):
    """The version the window was checked against, and when it became champion (Unix time, from its tag)."""

    version: str
    promoted_at_seconds: float | None = None

    def to_json(self) -> dict:
        return {"version": self.version, "promoted_at_seconds": self.promoted_at_seconds}


@dataclass(frozen=True)
class Evidence(_Result):
    """Whether a check had the rows it needs on this window. Below ``min_rows`` it measured nothing: its indicators
    are "no data", which counts neither as good nor as bad."""

    rows: int
    min_rows: int

    @property
    def enough(self) -> bool:
        return self.rows >= self.min_rows

    def to_json(self) -> dict:
        return {"rows": self.rows, "min_rows": self.min_rows, "enough": self.enough}


@dataclass(frozen=True)
class WindowReport:
    """Every check's result on one window.

    ``drift``, ``calibration`` and ``vi_health`` are None when the check is disabled (or, for drift, when no row
    is finite). ``predictions`` (the champion's, indexed like the window's finite rows) stay out of the JSON.
    """

    window: str
    model: str
    version: str
    inputs: InputsResult
    drift: DriftSummary | None
    calibration: CalibrationResult | None
    vi_health: VIHealthResult | None
    scoring: dict
    champion: ChampionInfo | None = None
    predictions: object = field(default=None, repr=False, metadata={"json": False})
    evidence: dict[str, Evidence] = field(default_factory=dict, metadata={"json": False})

    @property
    def drift_result(self):
        """The Evidently result of the feature drift (for its HTML report), or None."""
        return None if self.drift is None else self.drift.evidently

    def key_metrics(self) -> dict[str, float]:
        """The window's headline numbers, flat and finite (what an incident run logs as MLflow metrics)."""
        import math

        found = {"rows": self.inputs.rows, "labelled_rows": self.inputs.labelled_rows,
                 "nonfinite_values": self.inputs.nonfinite_values}
        if self.drift is not None:
            found.update({"drift_share": self.drift.share, "drift_weighted_share": self.drift.weighted_share,
                          "drift_cusum": self.drift.cusum,
                          "prediction_drift_share": self.drift.predictions.share if self.drift.predictions else None})
        if self.calibration is not None:
            found.update({name: getattr(self.calibration, name) for name in
                          ("coverage_90", "coverage_50", "pit_ks", "ece", "brier", "accuracy")})
        if self.vi_health is not None:
            found.update({"elbo_per_datum": self.vi_health.elbo_per_datum,
                          "elbo_per_datum_delta": self.vi_health.elbo_per_datum_delta, "nll": self.vi_health.nll,
                          "nll_delta": self.vi_health.nll_delta})
        return {name: float(value) for name, value in found.items()
                if value is not None and math.isfinite(float(value))}

    def to_json(self) -> dict:
        return {"window": self.window, "model": self.model, "version": self.version, "inputs": _json(self.inputs),
                "drift": _json(self.drift), "calibration": _json(self.calibration),
                "vi_health": _json(self.vi_health), "scoring": self.scoring, "champion": _json(self.champion),
                "evidence": _json(self.evidence)}
