"""Incident records: one per monitored window that fired an alert, linking the evidence.

Each record is a JSON line in ``incidents.jsonl`` (in the monitor's state directory) and a run of the
``viops-incidents`` MLflow experiment. The run carries tags ``viops.incident.*``, the window report
(``incident.json``), the SLO statuses, the decision, the window's key numbers as metrics (``window/drift_share``,
``window/coverage_90``, ``window/elbo_per_datum`` ...) and, when drift was measured, Evidently's HTML report
(``drift/report.html``; the same report is written beside the window in the store, incident or not). The incident
id is stable per model, alias and window, so re-running the monitor on a window finds its incident instead of
writing a second one.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

from pipelines.registry.audit import utc_now
from pipelines.tracking import experiment_id as get_experiment_id

__all__ = ["INCIDENT_EXPERIMENT", "write_incident"]

INCIDENT_EXPERIMENT = "viops-incidents"


def write_incident(client, record: dict, directory: str | Path, drift_result=None,
                   metrics: dict[str, float] | None = None) -> str:
    """Write ``record`` (must hold ``incident_id``) to MLflow and the JSON-lines file, each once; returns the run id.

    ``metrics`` (the window's key numbers: drift share, coverage, ELBO per datum ...) are logged as the run's
    metrics, so incidents can be compared and charted in MLflow like runs, not only read from tags. The drift report
    already written beside the window (``record["drift_report"]``) is logged as it is, not drawn a second time."""
    directory = Path(directory)
    experiment_id = get_experiment_id(client, INCIDENT_EXPERIMENT)
    found = client.search_runs([experiment_id], f"tags.`viops.incident.id` = '{record['incident_id']}'",
                               max_results=1)
    if found:
        run_id = found[0].info.run_id
    else:
        decision = record["decision"]
        run = client.create_run(experiment_id, run_name=f"{record['model']} {record['window']}: {decision['action']}",
                                tags={"viops.incident.id": record["incident_id"], "viops.incident.model": record["model"],
                                      "viops.incident.version": str(record["version"]),
                                      "viops.incident.window": record["window"],
                                      "viops.incident.action": decision["action"],
                                      "viops.incident.alert": decision.get("alert") or "",
                                      "viops.incident.runbook": decision.get("runbook") or "",
                                      "viops.incident.reason": decision["reason"][:5000]})
        run_id = run.info.run_id
        if metrics:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            client.log_batch(run_id, metrics=[Metric(f"window/{name}", value, now, 0)
                                              for name, value in sorted(metrics.items())])
        client.log_dict(run_id, record, "incident.json")
        if drift_result is not None:
            with tempfile.TemporaryDirectory() as tmp:
                html = Path(tmp) / "report.html"
                written = record.get("drift_report")
                if written and Path(written).is_file():
                    shutil.copyfile(written, html)
                else:
                    drift_result.save_html(html)
                client.log_artifact(run_id, str(html), "drift")
        client.set_terminated(run_id, status="FINISHED")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "incidents.jsonl"
    existing = path.read_text().splitlines() if path.exists() else []
    if not any(json.loads(line).get("incident_id") == record["incident_id"] for line in existing if line.strip()):
        with open(path, "a") as handle:
            handle.write(json.dumps({**record, "mlflow_run_id": run_id, "written_at": utc_now()}, default=str) + "\n")
    return run_id
