"""vi_monitoring under ``dag.test()`` with real Airflow, MLflow and Evidently: stable -> nothing, NaN burst -> page,
drift -> a triggered svi_retrain run (read back from Airflow's own records)."""

from __future__ import annotations

import json

import pytest

from pipelines.config import load_config
from pipelines.training import train
from tests.dags.conftest import REPO

SCENARIOS = REPO / "configs" / "scenarios"


def _states(run) -> dict[str, str]:
    return {ti.task_id: ti.state for ti in run.get_task_instances()}


@pytest.mark.slow
def test_vi_monitoring_branches_on_the_decision(airflow_db, tmp_path, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models import DagRun

    from monitoring.scenarios import load_scenario, simulate

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("VIOPS_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("VIOPS_AUDIT_LOG", str(tmp_path / "audit.jsonl"))
    monkeypatch.chdir(tmp_path)
    train(load_config(REPO / "configs" / "demo" / "blr_diabetes.yaml"), tracking_uri=uri)
    dag = DagBag(dag_folder=str(REPO / "dags")).get_dag("vi_monitoring")

    def run_on(name: str, index: int):
        scenario, training = load_scenario(SCENARIOS / f"diabetes_{name}.yaml")
        store = simulate(scenario.model_copy(update={"windows": index + 1}), training, tmp_path / name)
        # Only the window of interest: none of these decisions depends on earlier windows.
        run = dag.test(run_conf={"window": str(store.path(store.windows()[-1]))})
        assert run.state == "success", _states(run)
        return _states(run)

    stable = run_on("stable", 1)
    assert stable["no_action"] == "success" and stable["done"] == "success"
    assert {stable[t] for t in ("trigger_retrain", "rollback", "page")} == {"skipped"}

    burst = run_on("nan_burst", 6)
    assert burst["page"] == "success" and burst["trigger_retrain"] == "skipped"
    (page,) = [json.loads(line) for line in (tmp_path / "work" / "pages.jsonl").read_text().splitlines()]
    assert page["alert"] == "ViopsNanInputs" and page["runbook"] == "runbooks/ViopsNanInputs.md"

    drift = run_on("covariate_shift", 6)
    assert drift["trigger_retrain"] == "success" and drift["rollback"] == "skipped"
    # Airflow's own record of the triggered run (other tests of the session ran svi_retrain directly).
    (triggered,) = [r for r in DagRun.find(dag_id="svi_retrain") if r.run_id.startswith("monitor__")]
    assert triggered.run_type == "operator_triggered" and triggered.conf["window"].endswith("data.parquet")
    assert triggered.conf["reason"].startswith("ViopsDataDrift on window")


def test_vi_monitoring_shape(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(REPO / "dags")).get_dag("vi_monitoring")
    assert dag.get_task("decide").downstream_task_ids == {"no_action", "trigger_retrain", "rollback", "page"}
    assert dag.get_task("done").trigger_rule == "none_failed_min_one_success"
    assert dag.get_task("trigger_retrain").trigger_dag_id == "svi_retrain"
    assert dag.default_args["retries"] == 2 and dag.default_args["retry_exponential_backoff"]
