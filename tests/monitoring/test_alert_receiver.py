"""The Alertmanager webhook: bearer authentication, deduplication by fingerprint and startsAt, each alert recorded
with its runbook, and an Airflow outage answered with a 503 so that Alertmanager retries (nothing marked as done)."""

import warnings

import pytest

from monitoring.receiver import ReceiverSettings, create_app
from monitoring.receiver.airflow_api import AirflowAPI
from monitoring.receiver.webhook import runbook_actions
from monitoring.runbooks import load_runbooks
from tests.conftest import REPO, free_port

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _alert(name, severity="ticket", model="m", fingerprint="f1", starts="2026-01-01T01:00:05Z", window="1767229200",
           status="firing"):
    return {"status": status, "labels": {"alertname": name, "severity": severity, "model": model,
                                         "alias": "champion"},
            "annotations": {"runbook": f"runbooks/{name}.md", "window_start": window}, "startsAt": starts,
            "fingerprint": fingerprint}


def _notification(*alerts):
    return {"version": "4", "status": "firing", "receiver": "viops-ticket", "groupKey": "{}:{}", "alerts": list(alerts)}


def _client(tmp_path, airflow=None):
    return TestClient(create_app(ReceiverSettings(token=TOKEN, state_dir=tmp_path, runbooks_dir=REPO / "runbooks",
                                                  airflow=airflow)))


def test_a_request_without_the_token_is_refused_and_not_recorded(tmp_path):
    client = _client(tmp_path)
    assert client.post("/alerts", json=_notification(_alert("ViopsDataDrift"))).status_code == 401
    wrong = client.post("/alerts", json=_notification(_alert("ViopsDataDrift")),
                        headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert client.get("/alerts").status_code == 401
    assert client.get("/alerts", headers=AUTH).json() == []


def test_a_repeated_notification_of_one_firing_is_recorded_once_and_a_new_firing_again(tmp_path):
    client = _client(tmp_path)
    first = client.post("/alerts", json=_notification(_alert("ViopsDataDrift")), headers=AUTH).json()
    assert first["new"] == 1
    assert first["actions"] == [{"model": "m", "alias": "champion", "window": "2026-01-01T01:00:00Z",
                                 "alerts": ["ViopsDataDrift"], "dag_run": None,
                                 "runbooks": {"ViopsDataDrift": {"runbook": "runbooks/ViopsDataDrift.md",
                                                                 "action": "retrain"}},
                                 "note": "no Airflow configured: recorded only"}]
    assert client.post("/alerts", json=_notification(_alert("ViopsDataDrift")), headers=AUTH).json()["new"] == 0
    again = client.post("/alerts", json=_notification(_alert("ViopsDataDrift", starts="2026-01-01T02:00:05Z")),
                        headers=AUTH).json()
    assert again["new"] == 1  # the same alert firing again later is a new firing
    # Across a restart too: the ledger is on disk.
    assert _client(tmp_path).post("/alerts", json=_notification(_alert("ViopsDataDrift")),
                                  headers=AUTH).json()["new"] == 0
    records = client.get("/alerts", headers=AUTH).json()
    assert [r["starts_at"] for r in records] == ["2026-01-01T01:00:05Z", "2026-01-01T02:00:05Z"]


def test_malformed_payloads_get_a_clear_422(tmp_path):
    reply = _client(tmp_path).post("/alerts", json={"version": "4", "alerts": [{"labels": {}}]}, headers=AUTH)
    assert reply.status_code == 422
    assert "fingerprint" in reply.text


def test_each_alert_is_recorded_with_what_its_runbook_says():
    said = runbook_actions(["ViopsNanInputs", "ViopsDataDrift", "ViopsUnknown"], load_runbooks(REPO / "runbooks"))
    assert said == {"ViopsDataDrift": {"runbook": "runbooks/ViopsDataDrift.md", "action": "retrain"},
                    "ViopsNanInputs": {"runbook": "runbooks/ViopsNanInputs.md", "action": "page"},
                    "ViopsUnknown": {"runbook": "runbooks/ViopsUnknown.md", "action": "page"}}


def test_airflow_down_answers_503_so_alertmanager_retries_and_nothing_is_marked_done(tmp_path):
    down = AirflowAPI(f"http://127.0.0.1:{free_port()}", "viops", "pw", timeout=2)
    client = _client(tmp_path, airflow=down)
    reply = client.post("/alerts", json=_notification(_alert("ViopsDataDrift")), headers=AUTH)
    assert reply.status_code == 503
    assert "unreachable" in reply.json()["detail"]
    assert client.get("/alerts", headers=AUTH).json() == []
    # Once Airflow is back (here: none configured), the retried notification is acted on.
    assert _client(tmp_path).post("/alerts", json=_notification(_alert("ViopsDataDrift")),
                                  headers=AUTH).json()["new"] == 1


@pytest.mark.parametrize("window", ["", "not-a-number"])
def test_an_alert_without_a_window_is_recorded_for_a_person(tmp_path, window):
    reply = _client(tmp_path).post("/alerts", json=_notification(_alert("ViopsMetricsStale", window=window)),
                                   headers=AUTH).json()
    assert reply["actions"][0]["window"] is None
    assert "follow the runbook" in reply["actions"][0]["note"]
