"""The retrain DAG parses cleanly and runs end to end under ``dag.test()`` with real Airflow and MLflow."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from tests.conftest import EXAMPLE_CONFIG, make_regression_csv
from tests.dags.conftest import REPO


def test_dagbag_has_no_import_errors(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    dag = bag.get_dag("svi_retrain")
    assert dag is not None and dag.max_active_runs == 1
    assert [t.task_id for t in dag.topological_sort()] == ["prepare_data", "train", "register"]
    assert set(dag.params) >= {"reason", "config", "overrides"}


@pytest.mark.slow
def test_dag_test_prepares_trains_and_registers(airflow_db, tmp_path, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("VIOPS_WORK_DIR", str(tmp_path / "work"))
    (tmp_path / "blr_csv.yaml").write_text(EXAMPLE_CONFIG.read_text())
    make_regression_csv(tmp_path / "data.csv", n=500)

    dag = DagBag(dag_folder=str(REPO / "dags")).get_dag("svi_retrain")
    conf = {"reason": "pytest: new labels", "config": str(tmp_path / "blr_csv.yaml"), "overrides": ["train.max_epochs=3"]}
    run = dag.test(run_conf=conf)
    assert run.state == "success", [(ti.task_id, ti.state) for ti in run.get_task_instances()]

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    (found,) = client.search_model_versions("name='blr-example'")
    version = client.get_model_version("blr-example", found.version)
    assert set(version.aliases) == {"challenger", "champion"}
    mlflow_run = client.get_run(version.run_id)
    assert mlflow_run.info.status == "FINISHED"
    assert mlflow_run.data.tags["viops.trigger_reason"] == "pytest: new labels"
    assert mlflow_run.info.run_name.startswith("svi_retrain/")
