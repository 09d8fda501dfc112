"""Real Airflow services close the loop: api-server, scheduler and dag-processor (LocalExecutor, SQLite) in a
temporary AIRFLOW_HOME, a real MLflow server, and the monitoring DAG triggered on a drift window through the REST
API. The test waits (bounded) until the svi_retrain run that the monitoring run triggered has succeeded and a new
model version exists, and reads both runs back from Airflow's REST API."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from monitoring.scenarios import load_scenario, simulate
from pipelines.config.loading import load_config
from pipelines.lifecycle.train import train
from tests.conftest import REPO, free_port, require
from tests.integration.conftest import stop, wait_healthy

pytestmark = pytest.mark.integration
MODEL = "blr-diabetes"
#: Bounds for the whole loop on 2 CPU cores: parse, monitor (~20 s), then prepare/train/register/evaluate/promote.
TIMEOUT_S = 480


class AirflowAPI:
    def __init__(self, url: str):
        self.url = url
        with urllib.request.urlopen(f"{url}/auth/token", timeout=10) as resp:  # all-admins: no credentials
            self.token = json.loads(resp.read())["access_token"]

    def __call__(self, method: str, path: str, body: dict | None = None) -> dict:
        request = urllib.request.Request(
            f"{self.url}/api/v2{path}", method=method, data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as resp:
            return json.loads(resp.read())


def _wait(what: str, check, logs: dict[str, Path], timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(3)
    tails = "\n".join(f"--- {name}\n{path.read_text()[-2500:]}" for name, path in logs.items())
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{tails}")


@pytest.fixture
def airflow_services(tmp_path, mlflow_server):
    airflow = Path(sys.executable).parent / "airflow"
    require(airflow.exists(), "the airflow CLI is not installed in this environment")
    home, port = tmp_path / "airflow", free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update({
        "PATH": f"{airflow.parent}{os.pathsep}{env.get('PATH', '')}",
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(16),
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
        "MLFLOW_TRACKING_URI": mlflow_server,
        "VIOPS_WORK_DIR": str(tmp_path / "work"),
        "VIOPS_AUDIT_LOG": str(tmp_path / "audit.jsonl"),
        # Only the runs this test triggers: no hourly monitoring or weekly retrain run on unpause.
        "VIOPS_MONITOR_SCHEDULE": "none",
        "VIOPS_RETRAIN_SCHEDULE": "none",
    })
    home.mkdir()
    migrate = subprocess.run([str(airflow), "db", "migrate"], env=env, capture_output=True, text=True, timeout=300)
    assert migrate.returncode == 0, migrate.stderr[-3000:]
    procs, logs = [], {}
    for service in ("api-server", "scheduler", "dag-processor"):
        logs[service] = tmp_path / f"{service}.log"
        procs.append(subprocess.Popen([str(airflow), service], env=env, cwd=tmp_path, stdout=open(logs[service], "w"),
                                      stderr=subprocess.STDOUT))
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, procs[0], logs["api-server"], path="/api/v2/monitor/health", timeout=180)
        yield AirflowAPI(url), logs
    finally:
        for proc in procs:
            stop(proc)


def test_scheduler_runs_the_monitoring_dag_and_the_retrain_it_triggers(airflow_services, mlflow_server, tmp_path):
    api, logs = airflow_services
    client = MlflowClient(mlflow_server, mlflow_server)
    first = train(load_config(REPO / "configs" / "demo" / "blr_diabetes.yaml"), tracking_uri=mlflow_server)
    assert "champion" in first.aliases, first.registration
    scenario, training = load_scenario(REPO / "configs" / "scenarios" / "diabetes_covariate_shift.yaml")
    store = simulate(scenario.model_copy(update={"windows": scenario.start + 1}), training, tmp_path / "windows")
    window = store.path(store.windows()[-1])  # the first shifted window

    def parsed():
        try:
            return all(api("GET", f"/dags/{dag_id}")["dag_id"] for dag_id in ("vi_monitoring", "svi_retrain"))
        except urllib.error.HTTPError:
            return False

    _wait("the dag-processor to parse both DAGs", parsed, logs, 180)
    for dag_id in ("vi_monitoring", "svi_retrain"):
        assert api("PATCH", f"/dags/{dag_id}", {"is_paused": False})["is_paused"] is False
    run = api("POST", "/dags/vi_monitoring/dagRuns", {"logical_date": None, "conf": {"window": str(window)}})
    started = time.monotonic()

    def finished(dag_id: str, run_id: str):
        state = api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")["state"]
        assert state != "failed", f"{dag_id} run {run_id} failed; see the scheduler log"
        return state == "success"

    _wait("the monitoring run", lambda: finished("vi_monitoring", run["dag_run_id"]), logs, TIMEOUT_S)
    tasks = {t["task_id"]: t["state"]
             for t in api("GET", f"/dags/vi_monitoring/dagRuns/{run['dag_run_id']}/taskInstances")["task_instances"]}
    assert tasks["trigger_retrain"] == "success" and tasks["no_action"] == "skipped", tasks

    monitored = api("GET", f"/dags/vi_monitoring/dagRuns/{run['dag_run_id']}/taskInstances/monitor/xcomEntries/"
                           "return_value")["value"]
    assert monitored["decision"]["action"] == "retrain" and monitored["decision"]["alert"] == "ViopsDataDrift"
    (triggered,) = api("GET", "/dags/svi_retrain/dagRuns")["dag_runs"]
    assert triggered["dag_run_id"] == f"monitor__{monitored['incident_id']}", triggered
    assert triggered["run_type"] == "operator_triggered", triggered
    assert triggered["conf"]["incident_id"] == monitored["incident_id"]
    assert triggered["conf"]["window"] == str(window.resolve())
    _wait("the triggered svi_retrain run", lambda: finished("svi_retrain", triggered["dag_run_id"]), logs,
          TIMEOUT_S - (time.monotonic() - started))

    versions = {v.version: v for v in client.search_model_versions(f"name='{MODEL}'")}
    assert set(versions) == {"1", "2"}
    new = client.get_run(versions["2"].run_id)
    assert new.data.tags["viops.trigger_reason"] == triggered["conf"]["reason"]
    assert new.data.tags["viops.data_source"].endswith(str(window.resolve()))
    # Trained on the data plus the shifted window, it passes the gate against v1 and the run promotes it.
    assert client.get_model_version(MODEL, "2").tags.get("viops.gate.passed") == "true"
    retrain_tasks = {t["task_id"]: t["state"] for t in api(
        "GET", f"/dags/svi_retrain/dagRuns/{triggered['dag_run_id']}/taskInstances")["task_instances"]}
    assert retrain_tasks["promote"] == "success" and retrain_tasks["reject"] == "skipped", retrain_tasks
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "2"
