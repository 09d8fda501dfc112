"""The decision engine on the shipped runbooks: one action per window, preconditions, cooldowns, bad data."""

from __future__ import annotations

import pytest

from monitoring.decision import MonitorState, decide, incident_id
from monitoring.runbooks import load_runbooks
from monitoring.slo import SLOStatus
from tests.conftest import REPO

RUNBOOKS = load_runbooks(REPO / "runbooks")
FACTS = {"labelled_rows": 500, "nonfinite_values": 0, "windows_since_promotion": 10, "has_previous_champion": True}


def _statuses(*breached: str) -> list[SLOStatus]:
    names = ("feature_drift", "slow_drift", "prediction_drift", "predictive_sd_shift", "volume", "feed_rows",
             "coverage_90", "coverage_regression", "ece", "elbo_regression", "input_validity", "amortization_gap",
             "scoring_latency", "active_units")
    return [SLOStatus(n, n, "breach" if n in breached else "ok", 0.0, "", n not in breached, 0, 1, 0.0, 1.0,
                      f"{n}: {n} = 0 is {'not ' if n in breached else ''}within bounds") for n in names]


def _decide(*breached, history=(), **facts):
    return decide(_statuses(*breached), RUNBOOKS, list(history), {**FACTS, **facts})


def test_nothing_breached_is_none():
    assert _decide().action == "none"


def test_drift_retrains_when_there_are_labels_and_valid_inputs():
    d = _decide("feature_drift", "prediction_drift")
    assert (d.action, d.alert, d.runbook) == ("retrain", "ViopsDataDrift", "runbooks/ViopsDataDrift.md")
    short = _decide("feature_drift", labelled_rows=20)  # the retrain waits for labels: a ticket, not a page
    assert short.action == "ticket" and "20 labelled rows < min_labelled_rows 200" in short.reason


def test_nan_inputs_always_page_and_never_retrain():
    d = _decide("input_validity", "feature_drift", "elbo_regression", nonfinite_values=300)
    assert d.action == "page" and d.alert == "ViopsNanInputs" and "no automated change on bad data" in d.reason


def test_a_fresh_bad_deploy_rolls_back_before_anything_else():
    d = _decide("coverage_regression", "coverage_90", "elbo_regression", windows_since_promotion=1)
    assert d.action == "rollback" and d.alert == "ViopsCalibrationRegressionAfterDeploy"
    # An old champion: the after-deploy alert does not apply, and calibration loss means retraining.
    old = _decide("coverage_regression", "coverage_90", windows_since_promotion=10)
    assert old.action == "retrain" and old.alert == "ViopsCalibrationBreach"
    assert "ViopsCalibrationRegressionAfterDeploy" not in old.firing
    # Nothing to roll back to: the calibration breach retrains instead, and the reason says why not a rollback.
    alone = _decide("coverage_regression", windows_since_promotion=1, has_previous_champion=False)
    assert alone.action == "retrain" and "no previous-champion" in alone.reason
    # ... and a person decides when retraining is not possible either.
    stuck = _decide("coverage_regression", windows_since_promotion=1, has_previous_champion=False, labelled_rows=10)
    assert stuck.action == "page" and stuck.alert == "ViopsCalibrationRegressionAfterDeploy"


def test_cooldown_allows_one_retrain_then_waits_without_paging():
    history = [{"window": "w1", "action": "retrain", "runbook": "ViopsDataDrift"}]
    d = _decide("feature_drift", "elbo_regression", history=history)
    assert d.action == "none" and "cooldown" in d.reason  # no second retrain via another runbook either
    long_ago = history + [{"window": f"w{i}", "action": "none", "runbook": None} for i in range(2, 8)]
    assert _decide("feature_drift", history=long_ago).action == "retrain"
    # A rollback is not held back by a recent retrain.
    assert _decide("coverage_regression", history=history, windows_since_promotion=1).action == "rollback"


def test_people_are_paged_for_what_automation_cannot_fix():
    assert _decide("scoring_latency").action == "page"
    assert _decide("active_units").action == "page"


def test_state_replaces_a_rerun_window_and_history_excludes_it(tmp_path):
    state = MonitorState.load(tmp_path / "s.json")
    state.record({"window": "2026-01-01T01", "action": "none"})
    state.record({"window": "2026-01-01T02", "action": "retrain"})
    state.record({"window": "2026-01-01T02", "action": "retrain"})  # a re-run of the same window
    again = MonitorState.load(tmp_path / "s.json")
    assert [w["window"] for w in again.windows] == ["2026-01-01T01", "2026-01-01T02"]
    assert [w["window"] for w in again.before("2026-01-01T02")] == ["2026-01-01T01"]
    assert incident_id("m", "champion", "w") == incident_id("m", "champion", "w") != incident_id("m", "champion", "v")


@pytest.mark.parametrize("breached, alert", [("feature_drift", "ViopsDataDrift"),
                                             ("elbo_regression", "ViopsElboRegression"),
                                             ("coverage_90", "ViopsCalibrationBreach"),
                                             ("amortization_gap", "ViopsAmortizationGapBudget")])
def test_every_retrain_runbook_refuses_bad_data(breached, alert):
    """A retrain precondition that fails on bad data asks a person instead (at the runbook's severity), naming the
    alert and the bad values."""
    d = _decide(breached, nonfinite_values=5)
    assert (d.action, d.alert) == ("ticket", alert)
    assert f"{alert}: would retrain, but inputs are not valid (5 NaN/inf values)" in d.reason


def test_a_retrain_decided_but_not_executed_starts_no_cooldown():
    pending = [{"window": "w1", "action": "retrain", "executed": False, "runbook": "ViopsDataDrift"}]
    assert _decide("feature_drift", history=pending).action == "retrain"
    done = [{**pending[0], "executed": True}]
    assert _decide("feature_drift", history=done).action == "none"


def test_tickets_escalate_to_a_page_after_the_runbooks_run_of_windows():
    empty = [{"window": f"w{i}", "action": "ticket", "firing": ["ViopsLowVolume", "ViopsFeedEmpty"]} for i in (1, 2)]
    first = _decide("volume", "feed_rows", history=empty[:0])
    assert (first.action, first.severity) == ("ticket", "ticket")
    assert _decide("volume", "feed_rows", history=empty[:1]).action == "ticket"
    third = _decide("volume", "feed_rows", history=empty)
    assert (third.action, third.alert) == ("page", "ViopsFeedEmpty") and "3 windows in a row" in third.reason
    assert _decide("volume", history=empty).action == "ticket"  # a thin (not empty) feed stays a ticket


def test_tickets_wait_while_an_executed_retrain_takes_effect():
    retrained = [{"window": "w1", "action": "retrain", "executed": True, "runbook": "ViopsDataDrift"}]
    d = _decide("feature_drift", "prediction_drift", history=retrained)
    assert d.action == "none" and "held while an executed action takes effect" in d.reason
    assert _decide("prediction_drift").action == "ticket"  # on its own, prediction drift is a ticket


def test_every_objective_maps_to_an_alert_and_every_alert_to_an_action():
    from monitoring.alerts import THRESHOLD_ALERTS
    from monitoring.slo import load_slos

    watched = {o for objectives, *_ in THRESHOLD_ALERTS.values() for o in objectives}
    assert {o.name for o in load_slos(REPO / "configs" / "slo.yaml").objectives} <= watched
    assert all(RUNBOOKS[alert].action in ("retrain", "rollback", "page", "ticket") for alert in THRESHOLD_ALERTS)


@pytest.mark.parametrize("breached", [(), ("prediction_drift",), ("feature_drift", "slow_drift"), ("volume",),
                                      ("coverage_90", "elbo_regression"), ("scoring_latency", "predictive_sd_shift")])
def test_the_reason_names_exactly_the_breached_objectives(breached):
    statuses = _statuses(*breached)
    d = decide(statuses, RUNBOOKS, [], FACTS)
    assert d.breached == [s.name for s in statuses if s.status == "breach"]
    named = {s.name for s in statuses if f"{s.name}:" in d.reason.split(". ")[0]}
    assert named == set(breached)
    if not breached:
        assert d.action == "none" and d.reason.startswith("no objective breached")


def test_windows_since_promotion_comes_from_the_alias_change_time():
    from monitoring.decision import windows_since_promotion

    history = [{"window": f"w{i}", "monitored_at": 100.0 * i} for i in range(1, 6)]
    assert windows_since_promotion(history, 250.0) == 4  # w3, w4, w5 after the promotion, and this window
    assert windows_since_promotion(history, 10.0) is None  # promoted before anything this state remembers
    assert windows_since_promotion(history, None) is None and windows_since_promotion([], 5.0) is None
