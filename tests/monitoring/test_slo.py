"""SLO evaluation: good/bad per window, burn rate and error budget over the period, reasons, and bad SLO files."""

from __future__ import annotations

import re

import pytest

from monitoring.checks.indicators import IndicatorError, check_indicator, indicator_value
from monitoring.slo import SLOConfig, evaluate_slos, load_slos
from pipelines.config.base import ConfigError
from tests.conftest import REPO
from tests.monitoring.reports import make_report

DRIFT = SLOConfig.model_validate({"objectives": [
    {"name": "feature_drift", "indicator": "drift.share", "max": 0.1, "target": 0.9, "window": 10},
    {"name": "coverage_90", "indicator": "calibration.coverage_90", "min": 0.8, "max": 0.97, "target": 0.9,
     "window": 10},
]})


def test_shipped_slo_file_is_valid_and_every_indicator_is_a_report_path():
    slos = load_slos(REPO / "configs" / "slo.yaml")
    sections = {"drift", "calibration", "vi_health", "inputs"}
    assert all(o.indicator.split(".")[0] in sections for o in slos.objectives)
    assert {o.name for o in slos.objectives} >= {"feature_drift", "coverage_90", "ece", "elbo_regression",
                                                 "input_validity", "scoring_latency", "amortization_gap"}


def test_indicator_paths():
    report = make_report(drift={"share": 0.2, "predictions": {"share": 1}}, calibration={"ece": 0.05})
    assert indicator_value(report, "drift.share") == 0.2 and indicator_value(report, "drift.predictions.share") == 1.0
    assert indicator_value(report, "calibration.coverage_90") is None  # measured on a classifier: no coverage
    assert indicator_value(report, "calibration.delta.ece") is None and indicator_value(report, "vi_health.nll") is None
    assert indicator_value(report, "inputs.rows") == 500.0


@pytest.mark.parametrize("path, message", [
    ("drift.shares", "drift has no field 'shares'; it has ['columns', 'cusum', 'dataset_drift', 'drift_share', "),
    ("calibrations.ece", "the window report has no field 'calibrations'"),
    ("calibration.delta.coverage90", "calibration.delta has no field 'coverage90'"),
    ("drift.columns", "is not a number"),
    ("inputs.rows.count", "inputs.rows is a number, not a group of fields"),
])
def test_an_indicator_that_names_no_field_is_an_error_not_no_data(path, message):
    with pytest.raises(IndicatorError, match=re.escape(message)):
        check_indicator(path)


def test_a_renamed_field_fails_the_slo_file_at_load(tmp_path):
    (tmp_path / "slo.yaml").write_text("objectives:\n  - {name: drift, indicator: drift.drifted_share, max: 0.1}\n")
    with pytest.raises(ConfigError, match=r"objectives\.0: indicator 'drift\.drifted_share': drift has no field"):
        load_slos(tmp_path / "slo.yaml")


def test_a_good_window_with_a_clean_history_is_ok():
    (drift, coverage) = evaluate_slos(DRIFT, make_report(drift={"share": 0.0}, calibration={"coverage_90": 0.9}))
    assert drift.status == coverage.status == "ok"
    assert drift.burn_rate == 0.0 and drift.budget_remaining == 1.0 and drift.windows_in_period == 1


def test_a_bad_window_is_a_breach_with_burn_rate_and_budget():
    history = [{"feature_drift": True}] * 9
    (drift, coverage) = evaluate_slos(DRIFT, make_report(drift={"share": 0.3}), history)
    assert drift.status == "breach" and drift.good is False and drift.value == 0.3
    # 1 bad of 10 windows with a 10% budget: burn rate 1.0, budget exactly spent.
    assert drift.bad_in_period == 1 and drift.windows_in_period == 10
    assert drift.burn_rate == pytest.approx(1.0) and drift.budget_remaining == pytest.approx(0.0)
    assert "drift.share = 0.3 is not <= 0.1" in drift.reason and "burn rate 1.0x" in drift.reason
    assert coverage.status == "no_data" and coverage.burn_rate is None  # no labels in this window


def test_budget_exhausted_by_earlier_windows_and_the_period_slides():
    history = [{"feature_drift": False}, {"feature_drift": False}] + [{"feature_drift": True}] * 7
    (drift, _) = evaluate_slos(DRIFT, make_report(drift={"share": 0.05}), history)
    assert drift.status == "budget_exhausted" and drift.burn_rate == pytest.approx(2.0)
    assert drift.budget_remaining == pytest.approx(-1.0)
    # Ten windows later the two bad ones have left the period.
    (drift, _) = evaluate_slos(DRIFT, make_report(drift={"share": 0.05}),
                               history + [{"feature_drift": True}] * 10)
    assert drift.status == "ok" and drift.bad_in_period == 0


def test_two_sided_bounds_and_non_finite_values():
    (_, high) = evaluate_slos(DRIFT, make_report(calibration={"coverage_90": 0.99}))
    assert high.status == "breach" and "is not in [0.8, 0.97]" in high.reason
    (nan, _) = evaluate_slos(DRIFT, make_report(drift={"share": float("nan")}))
    assert nan.status == "breach"


@pytest.mark.parametrize("text, message", [
    ("objectives: []", "objectives: List should have at least 1 item"),
    ("objectives:\n  - {name: a, indicator: drift.share}\n", "give max, min or both"),
    ("objectives:\n  - {name: a, indicator: drift.share, max: 1}\n  - {name: a, indicator: inputs.rows, max: 1}\n",
     "repeated: ['a']"),
    ("objectives:\n  - {name: a, indicator: drift.share, max: 1, target: 1.0}\n", "objectives.0.target"),
])
def test_bad_slo_files_are_clear_errors(tmp_path, text, message):
    (tmp_path / "slo.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_slos(tmp_path / "slo.yaml")
