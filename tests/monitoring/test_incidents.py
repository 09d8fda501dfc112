"""An incident's MLflow run carries the window's Evidently drift report: the one the monitor already wrote beside the
window when there is one (writing the HTML again took 0.3 s for a 5.7-MB report of 30 columns), else drawn for it."""

import numpy as np
import pandas as pd
from mlflow import MlflowClient

from monitoring.checks.drift import drift_check
from monitoring.incidents import INCIDENT_EXPERIMENT, write_incident
from tests.conftest import mlflow_db


def _record(incident: str, drift_report: str | None) -> dict:
    return {"incident_id": incident, "model": "m", "alias": "champion", "severity": "ticket", "version": "1",
            "window": "2026-01-01T06:00:00Z", "drift_report": drift_report,
            "decision": {"action": "retrain", "alert": "ViopsDataDrift", "runbook": "data_drift", "reason": "drift"}}


def _logged_report(client: MlflowClient, run_id: str, tmp_path) -> str:
    assert {a.path for a in client.list_artifacts(run_id, "drift")} == {"drift/report.html"}
    return open(client.download_artifacts(run_id, "drift/report.html", str(tmp_path))).read()


def test_the_incident_logs_the_report_written_beside_the_window_else_draws_one(tmp_path):
    uri = mlflow_db(tmp_path / "mlflow.db")
    client = MlflowClient(uri, uri)
    client.create_experiment(INCIDENT_EXPERIMENT, artifact_location=(tmp_path / "artifacts").as_uri())
    rng = np.random.default_rng(0)
    columns = ["a", "b"]
    result = drift_check(pd.DataFrame(rng.normal(size=(300, 2)), columns=columns),
                         pd.DataFrame(rng.normal(1.0, size=(200, 2)), columns=columns), columns)
    beside = result.save_html(tmp_path / "window" / "drift_report.html")
    beside.write_text(beside.read_text() + "<!-- the window's own copy -->")

    run_id = write_incident(client, _record("i-1", str(beside)), tmp_path / "state", result)
    (tmp_path / "first").mkdir()
    assert _logged_report(client, run_id, tmp_path / "first") == beside.read_text()  # that file, not a new drawing

    run_id = write_incident(client, _record("i-2", None), tmp_path / "state", result)  # written with no report
    (tmp_path / "second").mkdir()
    drawn = _logged_report(client, run_id, tmp_path / "second")
    assert "<html" in drawn[:2000].lower() and "the window's own copy" not in drawn
