"""Typed window reports for tests of what reads them (SLOs, metrics), from only the values a test cares about."""

from __future__ import annotations

from monitoring.checks.results import (
    CalibrationDelta,
    CalibrationResult,
    DriftSummary,
    InputsResult,
    VIHealthResult,
    WindowReport,
)


def _drift(values: dict | None) -> DriftSummary | None:
    if values is None:
        return None
    return DriftSummary(share=values["share"], drifted_count=0, dataset_drift=False, drift_share=0.5, rows={},
                        columns={}, predictions=_drift(values.get("predictions")))


def make_report(*, inputs: dict | None = None, drift: dict | None = None, calibration: dict | None = None,
                vi_health: dict | None = None) -> WindowReport:
    """A report of a 500-row window with no NaN, holding the given sections (absent sections: not measured)."""
    counts = {"rows": 500, "finite_rows": 500, "nonfinite_values": 0, "nonfinite_fraction": 0.0,
              "nonfinite_by_column": {}, **(inputs or {})}
    cal = None
    if calibration is not None:
        fields = dict(calibration)
        cal = CalibrationResult(status="measured", delta=CalibrationDelta(**fields.pop("delta", {})), **fields)
    health = None if vi_health is None else VIHealthResult(nonfinite_values=0, nonfinite_fraction=0.0, **vi_health)
    return WindowReport("2026-01-01T00:00:00Z", "m", "1", InputsResult(**counts), _drift(drift), cal, health, {})
