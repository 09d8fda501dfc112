"""The distributed profile, for real: ``viops stack up`` starts MLflow on PostgreSQL (proxied artifacts), Airflow 3
with the CeleryExecutor (Redis broker, PostgreSQL metadata, a default and a ``gpu`` worker), Pushgateway,
Prometheus with the generated rules, Alertmanager and the alert receiver. A shifted window's results pushed by
``viops monitor`` make Prometheus fire; Alertmanager routes the alert to the receiver, which triggers
``vi_monitoring`` through the REST API; that run takes the same decision as the in-process monitor and triggers
``svi_retrain``, whose ``train`` task runs on the ``gpu`` worker and deploys a new version in shadow.

The test gets its own databases (dropped after), Redis database, ports and folder. It skips where PostgreSQL,
Redis or Prometheus are missing, except under ``VIOPS_REQUIRE_INTEGRATION=1``."""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from monitoring.receiver.airflow_api import AirflowAPI, AirflowUnavailable
from monitoring.scenarios import load_scenario, simulate
from pipelines.config.loading import load_config
from pipelines.lifecycle.train import train
from tests.conftest import REPO, free_port, require

pytestmark = pytest.mark.integration
MODEL = "blr-diabetes"
#: Bounds on 2 CPU cores: an alert within ~30 s of the push; the monitoring and retrain runs through Celery.
TIMEOUT_S = 480


def _reachable(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    require(_reachable(5432), "PostgreSQL is not running on 127.0.0.1:5432 (the distributed profile's databases)")
    require(_reachable(6379), "Redis is not running on 127.0.0.1:6379 (the Celery broker)")
    for binary in ("prometheus", "prometheus-alertmanager", "prometheus-pushgateway"):
        require(shutil.which(binary) is not None, f"{binary} is not installed (Debian package of that name)")
    require(__import__("importlib").util.find_spec("airflow.providers.celery") is not None,
            "apache-airflow-providers-celery is not installed (pip install 'viops[cluster]')")
    from viops.stack import load_profile
    from viops.stack.run import down, up

    suffix = secrets.token_hex(4)
    base = load_profile()
    profile = base.model_copy(update={
        "dir": tmp_path_factory.mktemp("stack"),
        "ports": base.ports.model_copy(update={name: free_port() for name in base.ports.model_fields}),
        "databases": base.databases.model_copy(update={"airflow": f"viops_test_{suffix}_airflow",
                                                       "mlflow": f"viops_test_{suffix}_mlflow"}),
        "redis": f"redis://127.0.0.1:6379/{secrets.randbelow(15) + 1}",  # not another stack's queues
        "prometheus": base.prometheus.model_copy(update={"scrape_interval": "2s", "evaluation_interval": "2s"}),
        "alertmanager": base.alertmanager.model_copy(update={"group_wait": "1s", "group_interval": "5s"}),
    })
    try:
        yield up(profile), profile
    finally:
        down(profile, drop_databases=True)


def _wait(what: str, check, logs: Path, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(2)
    tails = "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-2000:]}"
                      for log in sorted(logs.glob("*.log")))
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{tails}")


def _get(url: str, token: str | None = None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as resp:
        return json.loads(resp.read())


def test_an_alert_prometheus_fires_drives_the_runbook_through_celery_to_a_version_in_shadow(stack, tmp_path):
    stack, profile = stack
    began = time.time()
    from viops.stack.components import base_env, secret

    state = stack.state()
    assert state["executor"] == "CeleryExecutor" and set(state["parts"]) == {"mlflow", "monitoring", "airflow"}
    # Every service, and every process it started, listens on the profile's host and ports only.
    listening = _listening(stack)
    assert {address for address, _ in listening} == {(profile.host, port) for port in profile.ports.model_dump()
                                                     .values()}, listening
    env = base_env(profile)
    mlflow_url, logs = profile.url("mlflow"), stack.logs
    airflow_env = {k: v for k, v in _airflow_env(profile).items() if k.startswith("AIRFLOW")}
    executor = subprocess.run([str(Path(sys.executable).parent / "airflow"), "config", "get-value", "core",
                               "executor"], env={**env, **airflow_env}, capture_output=True, text=True, timeout=120)
    assert executor.stdout.strip() == "CeleryExecutor", executor.stderr[-2000:]

    # v1 through the tracking server only (its artifacts are proxied into the stack folder).
    first = train(load_config(REPO / "configs" / "demo" / "blr_diabetes.yaml"), tracking_uri=mlflow_url)
    assert "champion" in first.aliases, first.registration
    client = MlflowClient(mlflow_url, mlflow_url)
    assert client.get_run(first.run_id).info.artifact_uri.startswith("mlflow-artifacts:")
    assert any((profile.dir / "mlflow-artifacts").rglob("MLmodel"))
    scenario, training = load_scenario(REPO / "configs" / "scenarios" / "diabetes_covariate_shift.yaml")
    store = simulate(scenario.model_copy(update={"windows": scenario.start + 1}), training, profile.windows())
    window = store.path(store.windows()[-1])  # the first shifted window

    # The in-process decision, pushed to the Pushgateway like every monitored window.
    monitored = subprocess.run([str(Path(sys.executable).parent / "viops"), "monitor", "--model", MODEL, "--window",
                                str(window), "--json", "--no-drift-report"], env=env, capture_output=True, text=True,
                               timeout=300)
    assert monitored.returncode == 0, monitored.stderr[-3000:]
    in_process = json.loads(monitored.stdout)
    assert in_process["decision"]["action"] == "retrain" and in_process["metrics"]["pushed"], in_process

    # Prometheus evaluates the same objectives into the same threshold alerts. (An "after deploy" alert may fire in
    # Prometheus, whose clock says the champion is minutes old, and not apply in the engine, which counts windows
    # since the promotion: both are in the alerts the engine considered.)
    considered = {c["alert"] for c in in_process["decision"]["considered"]} or set(in_process["decision"]["firing"])

    def firing():
        alerts = _get(f"{profile.url('prometheus')}/api/v1/alerts")["data"]["alerts"]
        names = {a["labels"]["alertname"] for a in alerts
                 if a["state"] == "firing" and a["labels"].get("model") == MODEL}
        return names if considered <= names else None

    fired = _wait("Prometheus to fire the window's alerts", firing, logs, 120)
    assert {a for a in fired if "BurnRate" not in a} == considered

    # Alertmanager delivers them to the receiver, which triggers vi_monitoring for that window.
    token = secret(profile.dir.resolve(), "alert-receiver-token")

    def triggered():
        records = _get(f"{profile.url('alert_receiver')}/alerts", token)
        return next((r for r in records if r.get("dag_run") and r["window"] == in_process["window"]), None)

    record = _wait("the alert receiver to trigger vi_monitoring", triggered, logs, 120)
    assert record["receiver"] in ("viops-page", "viops-ticket") and record["fingerprint"]
    # Alertmanager routed by severity and inhibited the model's tickets while a page fires for it.
    routed = _get(f"{profile.url('alertmanager')}/api/v2/alerts?filter=" + urllib.request.quote(f'model="{MODEL}"'))
    pages = [a for a in routed if a["labels"]["severity"] == "page" and a["status"]["state"] == "active"]
    tickets = [a for a in routed if a["labels"]["severity"] == "ticket"]
    assert pages and tickets and all(a["status"]["inhibitedBy"] for a in tickets), routed
    assert all(r["labels"]["severity"] == "page" for r in _get(f"{profile.url('alert_receiver')}/alerts", token)
               if r["labels"].get("model") == MODEL), "an inhibited ticket reached the receiver"
    api = AirflowAPI(profile.url("airflow"), "viops", secret(profile.dir.resolve(), "airflow-viops"))
    run_id = record["dag_run"]["dag_run_id"]

    def finished(dag_id: str, run_id: str):
        try:
            run = api.call("GET", f"/dags/{dag_id}/dagRuns/{urllib.request.quote(run_id, safe='')}")
        except AirflowUnavailable:  # one slow answer while the workers train on a loaded machine: ask again
            return None
        assert run["state"] != "failed", f"{dag_id} run {run_id} failed; see {logs}"
        return run if run["state"] == "success" else None

    run = _wait("the alert's vi_monitoring run", lambda: finished("vi_monitoring", run_id), logs, TIMEOUT_S)
    assert run["conf"]["alert"]["fingerprints"] and run["conf"]["window"] == in_process["window"]
    quoted = urllib.request.quote(run_id, safe="")
    decided = api.call("GET", f"/dags/vi_monitoring/dagRuns/{quoted}/taskInstances/monitor/xcomEntries/"
                              "return_value")["value"]
    assert decided["decision"]["action"] == in_process["decision"]["action"]
    assert decided["decision"]["alert"] == in_process["decision"]["alert"]
    assert decided["incident_id"] == in_process["incident_id"]

    retrain_id = f"monitor__{decided['incident_id']}"
    _wait("the triggered svi_retrain run", lambda: finished("svi_retrain", retrain_id), logs, TIMEOUT_S)
    train_ti = api.call("GET", f"/dags/svi_retrain/dagRuns/{retrain_id}/taskInstances/train")
    assert train_ti["queue"] == "gpu", train_ti
    # The demo config deploys a retrained version in shadow (deploy.strategy): challenger, not champion yet.
    live = api.call("GET", f"/dags/svi_retrain/dagRuns/{retrain_id}/taskInstances/deploy_live")
    assert live["state"] == "success", live
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "1"
    candidate = client.get_model_version_by_alias(MODEL, "challenger")
    assert str(candidate.version) == "2" and candidate.tags["viops.deploy.stage"] == "shadow"
    tags = client.get_run(client.get_model_version(MODEL, "2").run_id).data.tags
    assert tags["viops.airflow.queue"] == "gpu" and tags["viops.airflow.worker"].startswith("gpu@"), tags
    prepare_ti = api.call("GET", f"/dags/svi_retrain/dagRuns/{retrain_id}/taskInstances/prepare_data")
    assert prepare_ti["queue"] == "default"

    # The dashboards: a promotion and a rollback by hand (pushed as annotation events), then every panel's and
    # annotation's query returns data from the real Prometheus over the test's time range, and the PNGs are drawn.
    promoted = subprocess.run([str(Path(sys.executable).parent / "viops"), "promote", "--model", MODEL, "--version",
                               "2", "--reason", "test: the dashboards' promotion annotation", "--json"], env=env,
                              capture_output=True, text=True, timeout=300)
    assert promoted.returncode == 0 and json.loads(promoted.stdout)["pushed"], promoted.stderr[-2000:]
    rolled = subprocess.run([str(Path(sys.executable).parent / "viops"), "rollback", "--model", MODEL, "--reason",
                             "test: the dashboards' rollback annotation", "--json"], env=env, capture_output=True,
                            text=True, timeout=300)
    assert rolled.returncode == 0 and json.loads(rolled.stdout)["pushed"], rolled.stderr[-2000:]
    from monitoring.dashboard_snapshots import query_range, snapshot_all
    from monitoring.dashboards import VIEWS, queries

    def empty_queries():
        end = time.time()
        return [f"{view.uid}: {title}: {expr}" for view in VIEWS for title, expr in queries(view)
                if not query_range(profile.url("prometheus"), expr, began, end, 2)]

    deadline = time.monotonic() + 60  # the rollback's push reaches Prometheus with its next scrape
    while (missing := empty_queries()) and time.monotonic() < deadline:
        time.sleep(3)
    assert not missing, "dashboard queries without data:\n" + "\n".join(missing)
    pngs = snapshot_all(profile.url("prometheus"), began, time.time(), tmp_path / "dashboards")
    assert [p.name for p in pngs] == [f"{v.uid}.png" for v in VIEWS] and all(p.stat().st_size > 10_000 for p in pngs)


def _listening(stack) -> set[tuple[tuple[str, int], str]]:
    """``((address, port), service)`` of every listening TCP socket of the stack's services and their children."""
    import psutil

    found = set()
    for name, entry in stack.describe().items():
        try:
            root = psutil.Process(entry["pid"])
            processes = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for process in processes:
            try:
                sockets = process.net_connections(kind="inet")
            except psutil.NoSuchProcess:
                continue
            found |= {((s.laddr.ip, s.laddr.port), name) for s in sockets if s.status == psutil.CONN_LISTEN}
    return found


def _airflow_env(profile):
    from viops.stack.components import airflow_env

    return airflow_env(profile)
