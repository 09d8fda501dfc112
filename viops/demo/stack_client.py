"""The running stack as ``make demo-cluster`` talks to it: Airflow's REST API, Prometheus' and the receiver's."""

from __future__ import annotations

import json
import time
import urllib.request

__all__ = ["StackClient", "until", "get_json", "RUN_TIMEOUT_S", "ALERT_TIMEOUT_S"]

#: Bounds on 2 CPU cores: one monitoring run, an alert's way to the receiver, one retrain through Celery.
RUN_TIMEOUT_S, ALERT_TIMEOUT_S = 300, 90


def get_json(url: str, token: str | None = None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as resp:
        return json.loads(resp.read())


def until(what: str, check, timeout: float, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(every)
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}; see the logs in the stack folder")


class StackClient:
    """The running stack as the demo talks to it: Airflow's REST API, Prometheus' and the receiver's."""

    def __init__(self, profile):
        from monitoring.receiver.airflow_api import AirflowAPI
        from viops.stack.components import secret

        root = profile.dir.resolve()
        self.profile = profile
        self.api = AirflowAPI(profile.url("airflow"), "viops", secret(root, "airflow-viops"))
        self.token = secret(root, "alert-receiver-token")

    def finished(self, dag_id: str, run_id: str, timeout: float = RUN_TIMEOUT_S) -> dict:
        quoted = urllib.request.quote(run_id, safe="")

        def done():
            run = self.api.call("GET", f"/dags/{dag_id}/dagRuns/{quoted}")
            if run["state"] == "failed":
                raise SystemExit(f"{dag_id} run {run_id} failed; see {self.profile.dir / 'logs'} and the Airflow UI")
            return run if run["state"] == "success" else None

        return until(f"{dag_id} run {run_id}", done, timeout, every=2)

    def tasks(self, dag_id: str, run_id: str) -> dict[str, dict]:
        quoted = urllib.request.quote(run_id, safe="")
        return {t["task_id"]: t for t in self.api.call("GET", f"/dags/{dag_id}/dagRuns/{quoted}/taskInstances")[
            "task_instances"]}

    def xcom(self, dag_id: str, run_id: str, task_id: str):
        quoted = urllib.request.quote(run_id, safe="")
        return self.api.call("GET", f"/dags/{dag_id}/dagRuns/{quoted}/taskInstances/{task_id}/xcomEntries/"
                                    "return_value")["value"]

    def firing_for(self, model: str, start: float) -> list[str] | None:
        """Threshold alerts Prometheus fires on this window (None until it has evaluated the window's push)."""
        pushed = get_json(f"{self.profile.url('prometheus')}/api/v1/query?query=" + urllib.request.quote(
            f'viops_window_start_timestamp_seconds{{model="{model}"}}'))["data"]["result"]
        if not pushed or float(pushed[0]["value"][1]) != start:
            return None
        alerts = get_json(f"{self.profile.url('prometheus')}/api/v1/alerts")["data"]["alerts"]
        return sorted({a["labels"]["alertname"] for a in alerts if a["state"] == "firing"
                       and a["labels"].get("model") == model and a["labels"].get("window_start") == f"{start:.0f}"})

    def received(self, window: str) -> list[dict]:
        return [r for r in get_json(f"{self.profile.url('alert_receiver')}/alerts", self.token)
                if r.get("window") == window and r["status"] == "firing"]
