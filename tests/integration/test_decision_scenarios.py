"""The decisions on every simulated scenario, with seeds other than the shipped ones: the first action and its
window, and the false alarms (what docs/monitoring.md#scenarios tabulates; ``benchmarks/decision_scenarios.py``
measures the table). Windows are replayed through the monitor as the vi_monitoring DAG runs it (``dispatched``)."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from monitoring.checks.config import load_checks_config
from monitoring.replay import first_action, replay
from monitoring.runbooks import load_runbooks
from monitoring.scenarios import load_scenario, simulate
from monitoring.slo import load_slos
from pipelines.config.loading import load_config
from pipelines.lifecycle.train import train
from tests.conftest import REPO, mlflow_db

pytestmark = pytest.mark.integration
MODEL = "blr-diabetes"


@pytest.fixture(scope="module")
def replayer(tmp_path_factory):
    root = tmp_path_factory.mktemp("decisions")
    uri = mlflow_db(root / "mlflow.db")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("VIOPS_AUDIT_LOG", str(root / "audit.jsonl"))
        train(load_config(REPO / "configs" / "demo" / "blr_diabetes.yaml"), tracking_uri=uri)
    client = MlflowClient(uri, uri)
    options = dict(checks=load_checks_config(REPO / "configs" / "monitoring.yaml"),
                   slos=load_slos(REPO / "configs" / "slo.yaml"), runbooks=load_runbooks(REPO / "runbooks"))

    def run(name: str, seed: int, **changes):
        scenario, training = load_scenario(REPO / "configs" / "scenarios" / f"{name}.yaml")
        out = root / f"{name}-{seed}"
        simulate(scenario.model_copy(update={"seed": seed, **changes}), training, out)
        return replay(client, model=MODEL, store=out, tracking_uri=uri, state_dir=out / ".state", **options)

    return run


def _actions(decisions) -> list[str]:
    return [d.action for d in decisions]


def test_stable_30_windows_at_most_one_decision(replayer):
    actions = _actions(replayer("diabetes_stable", 101, windows=30))
    assert sum(a != "none" for a in actions) <= 1, actions


def test_small_windows_neither_page_nor_retrain(replayer):
    decisions = replayer("diabetes_small_windows", 102)
    assert {d.action for d in decisions} == {"none"}, [(d.action, d.reason) for d in decisions]
    assert "too little evidence" in decisions[0].reason and "20 rows < the 100" in decisions[0].reason


def test_an_empty_window_raises_a_ticket_then_a_page(replayer):
    decisions = replayer("diabetes_empty", 103, windows=10)
    assert _actions(decisions)[5:10] == ["none", "ticket", "ticket", "page", "page"]
    assert decisions[6].alert in ("ViopsLowVolume", "ViopsFeedEmpty") and "feed_rows" in decisions[6].breached
    assert decisions[8].alert == "ViopsFeedEmpty"


def test_a_key_feature_retrains_at_once_and_an_unused_one_never(replayer):
    key = first_action(replayer("diabetes_single_feature", 104, windows=8))
    assert key is not None and key.action == "retrain" and key.index in (6, 7), key
    assert key.alert == "ViopsDataDrift" and "feature_drift" in key.breached
    unused = replayer("diabetes_irrelevant_feature", 105)
    assert not {"retrain", "page"} & set(_actions(unused)[6:]), [(d.action, d.reason) for d in unused[6:]]


def test_gradual_drift_acts_within_four_windows_of_half_an_sd(replayer):
    # +0.1 SD a window from window 6 reaches 0.5 SD at window 10.
    action = first_action(replayer("diabetes_gradual", 106, windows=15))
    assert action is not None and action.action == "retrain" and 6 <= action.index <= 14, action


def test_label_noise_retrains_at_onset(replayer):
    action = first_action(replayer("diabetes_label_noise", 107, windows=8))
    assert action is not None and (action.action, action.index) == ("retrain", 6), action
