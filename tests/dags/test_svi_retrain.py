"""The retrain DAG parses cleanly and runs each of its branches (promote, reject, deploy_live) under ``dag.test()``
with real Airflow and MLflow; the gate's verdicts and the promotion reach a real Pushgateway."""

from __future__ import annotations

import json
import urllib.request

import pytest
from mlflow import MlflowClient

from pipelines.registry.audit import read_log
from tests.conftest import EXAMPLE_CONFIG, make_regression_csv, mlflow_db, pushgateway
from tests.dags.conftest import REPO

TRAIN = ["train.max_epochs=60", "train.batch_size=64"]


def test_dagbag_has_no_import_errors(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    dag = bag.get_dag("svi_retrain")
    assert dag is not None and dag.max_active_runs == 1
    order = [t.task_id for t in dag.topological_sort()]
    assert order[:5] == ["prepare_data", "train", "register", "evaluate", "decide"]
    assert set(order[5:8]) == {"promote", "deploy_live", "reject"} and order[8] == "notify"
    assert dag.get_task("decide").downstream_task_ids == {"promote", "deploy_live", "reject"}
    assert dag.get_task("notify").trigger_rule == "none_failed_min_one_success"
    assert set(dag.params) >= {"reason", "config", "overrides"}


def test_retrain_runs_on_new_training_data_or_weekly_on_a_configurable_queue_and_pool(airflow_db, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("VIOPS_TRAIN_QUEUE", "gpu")
    monkeypatch.setenv("VIOPS_TRAIN_POOL", "gpu_pool")
    monkeypatch.setenv("VIOPS_TRAINING_DATA_ASSET", "viops://training-data/pytest")
    dag = DagBag(dag_folder=str(REPO / "dags")).get_dag("svi_retrain")
    timetable = dag.timetable
    assert type(timetable).__name__ == "AssetOrTimeSchedule"
    assert "viops://training-data/pytest" in repr(timetable.asset_condition)
    assert timetable.timetable.summary == "0 0 * * 0"  # @weekly
    train_task = dag.get_task("train")
    assert (train_task.queue, train_task.pool) == ("gpu", "gpu_pool")
    assert dag.get_task("evaluate").queue != "gpu"  # only training needs the GPU queue


def test_kubernetes_pod_override_asks_for_one_gpu_for_training_only(airflow_db, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag
    from airflow.providers.cncf.kubernetes.pod_generator import PodGenerator
    from kubernetes.client import models as k8s

    example = REPO / "configs" / "airflow" / "gpu_pod_override.yaml"
    monkeypatch.setenv("VIOPS_TRAIN_POD_OVERRIDE", str(example))
    dag = DagBag(dag_folder=str(REPO / "dags")).get_dag("svi_retrain")
    override = dag.get_task("train").executor_config["pod_override"]
    assert isinstance(override, k8s.V1Pod)
    assert not dag.get_task("evaluate").executor_config
    # What the KubernetesExecutor does with it: merge into the worker pod, keeping the image and command.
    base = k8s.V1Pod(spec=k8s.V1PodSpec(containers=[k8s.V1Container(name="base", image="viops:1", args=["run"])]))
    pod = PodGenerator.reconcile_pods(base, override)
    (container,) = pod.spec.containers
    assert container.image == "viops:1" and container.args == ["run"]
    assert container.resources.limits["nvidia.com/gpu"] == "1" == container.resources.requests["nvidia.com/gpu"]
    assert pod.spec.tolerations[0].key == "nvidia.com/gpu"

    monkeypatch.setenv("VIOPS_TRAIN_POD_OVERRIDE", str(REPO / "configs" / "airflow" / "missing.yaml"))
    bag = DagBag(dag_folder=str(REPO / "dags"))
    (error,) = [e for f, e in bag.import_errors.items() if f.endswith("svi_retrain.py")]
    assert "VIOPS_TRAIN_POD_OVERRIDE" in error and "missing.yaml" in error


def _states(run) -> dict[str, str]:
    return {ti.task_id: ti.state for ti in run.get_task_instances()}


@pytest.mark.slow
def test_dag_test_promotes_a_good_model_and_rejects_a_bad_one(airflow_db, tmp_path, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    uri = mlflow_db(tmp_path / "mlflow.db")
    audit = tmp_path / "audit.jsonl"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("VIOPS_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("VIOPS_AUDIT_LOG", str(audit))
    (tmp_path / "blr_csv.yaml").write_text(EXAMPLE_CONFIG.read_text())
    make_regression_csv(tmp_path / "data.csv", n=1200)
    dag = DagBag(dag_folder=str(REPO / "dags")).get_dag("svi_retrain")
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)

    with pushgateway(tmp_path / "pushgateway.log") as gateway:
        monkeypatch.setenv("VIOPS_PUSHGATEWAY", gateway)
        _promote_then_reject(dag, client, tmp_path, audit)
        scraped = urllib.request.urlopen(f"{gateway}/metrics", timeout=5).read().decode()
    # What the dashboards read: the latest verdict (the rejection of version 2) and the promotion of version 1.
    gate = 'candidate="2",champion="1",instance="",job="viops_gate",model="blr-example"'
    assert f"viops_gate_passed{{{gate}}} 0" in scraped and f"viops_gate_nll_delta_nats{{{gate}}} " in scraped
    assert ('viops_registry_change_timestamp_seconds{action="promote",instance="",job="viops_registry",'
            'model="blr-example",previous="none",version="1"}') in scraped

    # 3. deploy.strategy shadow: a version that passes the gate goes to shadow, not to champion.
    conf = {"reason": "pytest: shadow first", "config": str(tmp_path / "blr_csv.yaml"),
            "overrides": [*TRAIN, "deploy.strategy=shadow", "train.seed=4"]}
    run = dag.test(run_conf=conf)
    states = _states(run)
    assert run.state == "success", states
    assert states["deploy_live"] == "success" and {states["promote"], states["reject"]} == {"skipped"}
    assert str(client.get_model_version_by_alias("blr-example", "champion").version) == "1"
    candidate = client.get_model_version_by_alias("blr-example", "challenger")
    assert str(candidate.version) == "3" and candidate.tags["viops.deploy.stage"] == "shadow"
    assert json.loads(candidate.tags["viops.deploy.policy"])["shadow_windows"] == 3
    assert candidate.tags["viops.deploy.started_by"] == f"airflow:svi_retrain/{run.run_id}"
    assert len(read_log(audit)) == 1


def _promote_then_reject(dag, client, tmp_path, audit) -> None:
    # 1. The first model: the gate checks absolute thresholds, the model passes and is promoted.
    conf = {"reason": "pytest: new labels", "config": str(tmp_path / "blr_csv.yaml"), "overrides": TRAIN}
    run = dag.test(run_conf=conf)
    states = _states(run)
    assert run.state == "success", states
    assert states["promote"] == "success" and states["reject"] == "skipped" and states["notify"] == "success"
    assert run.get_task_instance("evaluate").try_number == 1  # no step failed and was retried
    version = client.get_model_version_by_alias("blr-example", "champion")
    assert str(version.version) == "1" and version.tags["viops.gate.passed"] == "true"
    mlflow_run = client.get_run(version.run_id)
    assert mlflow_run.data.tags["viops.trigger_reason"] == "pytest: new labels"
    assert mlflow_run.info.run_name.startswith("svi_retrain/")
    (record,) = read_log(audit)
    assert record["action"] == "promote" and record["to_version"] == "1" and record["reason"] == "pytest: new labels"
    assert record["trigger"]["dag_id"] == "svi_retrain" and record["trigger"]["run_id"] == run.run_id
    assert record["actor"] == f"airflow:svi_retrain/{run.run_id}"

    # 2. A bad model (noise scale fixed far too small): the gate rejects it, the champion stays.
    conf = {"reason": "pytest: bad retrain", "config": str(tmp_path / "blr_csv.yaml"),
            "overrides": [*TRAIN, "model.noise.fixed=0.02"]}
    run = dag.test(run_conf=conf)
    states = _states(run)
    assert run.state == "success", states
    assert states["reject"] == "success" and states["promote"] == "skipped" and states["notify"] == "success"
    assert str(client.get_model_version_by_alias("blr-example", "champion").version) == "1"
    rejected = client.get_model_version("blr-example", "2")
    assert rejected.tags["viops.gate.passed"] == "false" and "nll_tolerance" in rejected.tags["viops.gate.reasons"]
    assert set(rejected.aliases) == {"challenger"}
    assert len(read_log(audit)) == 1  # a rejection moves no alias, so it writes no audit record
