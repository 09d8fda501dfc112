"""vi_monitoring under ``dag.test()`` with real Airflow, MLflow and Evidently: stable -> nothing, NaN burst -> page,
drift -> a triggered svi_retrain run (read back from Airflow's own records), a hand-promoted bad version rolled
back, and a challenger in shadow promoted by the deploy branch."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from mlflow import MlflowClient

from monitoring.windows import window_key
from pipelines.config.loading import load_config, parse_overrides
from pipelines.lifecycle.train import train
from pipelines.registry.audit import read_log
from pipelines.registry.gate import evaluate
from pipelines.registry.promotion import promote
from tests.conftest import mlflow_db
from tests.dags.conftest import REPO
from viops.cli import main as monitor_main

SCENARIOS = REPO / "configs" / "scenarios"
MODEL = "blr-diabetes"


def _xcom(run, task_id: str):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.scalars(XComModel.get_many(run_id=run.run_id, dag_ids=run.dag_id, task_ids=task_id,
                                                 key="return_value")).first()
        return None if row is None else XComModel.deserialize_value(row)


def _states(run) -> dict[str, str]:
    return {ti.task_id: ti.state for ti in run.get_task_instances()}


@pytest.mark.slow
def test_vi_monitoring_branches_on_the_decision(airflow_db, tmp_path, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models import DagRun

    from monitoring.scenarios import load_scenario, simulate

    uri = mlflow_db(tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("VIOPS_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("VIOPS_AUDIT_LOG", str(tmp_path / "audit.jsonl"))
    monkeypatch.chdir(tmp_path)
    train(load_config(REPO / "configs" / "demo" / "blr_diabetes.yaml"), tracking_uri=uri)
    dag = DagBag(dag_folder=str(REPO / "dags")).get_dag("vi_monitoring")

    def run_on(name: str, index: int):
        scenario, training = load_scenario(SCENARIOS / f"diabetes_{name}.yaml")
        store = simulate(scenario.model_copy(update={"windows": index + 1}), training, tmp_path / name)
        # Only the window of interest: none of these decisions depends on earlier windows, nor on its HTML drift
        # report (the scheduled run below writes one).
        run = dag.test(run_conf={"window": str(store.path(store.windows()[-1])), "drift_report": False})
        assert run.state == "success", _states(run)
        return _states(run)

    stable = run_on("stable", 1)
    assert stable["no_action"] == "success" and stable["done"] == "success"
    assert {stable[t] for t in ("trigger_retrain", "rollback", "page", "ticket")} == {"skipped"}

    # A window without the champion's features fails the monitor task, and nothing downstream acts; an empty
    # window is a ticket (the feed ran dry), not a failure.
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "narrow.csv").write_text("age,sex,bmi\n0.01,0.05,0.06\n")
    (tmp_path / "bad" / "empty.csv").write_text("age,sex,bmi,bp,s1,s2,s3,s4,s5,s6,target\n")
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    champion = client.get_model_version_by_alias(MODEL, "champion").version
    run = dag.test(run_conf={"window": str(tmp_path / "bad" / "narrow.csv"), "drift_report": False})
    failed = _states(run)
    assert run.state == "failed" and failed["monitor"] == "failed", failed
    # at once: the retry policy does not wait out retries that would fail the same way
    assert run.get_task_instance("monitor").try_number == 1
    assert "success" not in {failed[t] for t in ("trigger_retrain", "rollback", "page", "ticket", "no_action")}
    run = dag.test(run_conf={"window": str(tmp_path / "bad" / "empty.csv"), "drift_report": False})
    assert run.state == "success" and _states(run)["ticket"] == "success", _states(run)
    assert client.get_model_version_by_alias(MODEL, "champion").version == champion

    # A scheduled run, or a backfill's, monitors the window of its data interval, not the newest of the store;
    # the window was monitored with its drift report written beside it.
    scenario, training = load_scenario(SCENARIOS / "diabetes_stable.yaml")
    # Hours no run above can have as its logical date: dag.test reuses a finished run of the same logical date.
    february = datetime(2026, 2, 1, tzinfo=timezone.utc)
    past = simulate(scenario.model_copy(update={"windows": 3, "window_start": february}), training, tmp_path / "past")
    # window "" as a scheduled run has it (dag.test keeps an earlier call's conf in the DAG's params). A run at
    # 02:00 has the data interval [01:00, 02:00): the 01:00 window, not the newest (02:00).
    run = dag.test(logical_date=past.windows()[2],
                   run_conf={"store": str(past.root), "window": "", "drift_report": True})
    assert run.state == "success", _states(run)
    hour = past.windows()[1]
    assert (run.data_interval_start, run.data_interval_end) == (hour, past.windows()[2])
    result = _xcom(run, "monitor")
    assert result["window"] == window_key(hour)
    assert result["drift_report"] == str(past.directory(hour) / "drift_report.html")
    html = (past.directory(hour) / "drift_report.html").read_text()
    assert html.lstrip().lower().startswith("<!doctype html") and "bmi" in html and "s5" in html  # its columns
    from dags.vi_monitoring import _window_of

    later = past.windows()[-1] + timedelta(hours=5)
    with pytest.raises(ValueError, match=r"no window of the data interval \[2026-02-01T07:00:00Z, "
                                         r"2026-02-01T08:00:00Z\) in store .* \(it holds 2026-02-01T00:00:00Z to "
                                         r"2026-02-01T02:00:00Z\); a retry monitors it once it lands"):
        _window_of(str(past.root), later, later + timedelta(hours=1))

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

    # The triggered retrain (run here as a scheduler would) trains on the data plus the window's labelled rows.
    retrain = DagBag(dag_folder=str(REPO / "dags")).get_dag("svi_retrain")
    run = retrain.test(logical_date=triggered.logical_date, run_conf=triggered.conf)
    assert run.state == "success", _states(run)
    new = client.get_model_version(MODEL, "2")
    trained = client.get_run(new.run_id)
    assert trained.data.tags["viops.trigger_reason"] == triggered.conf["reason"]
    assert trained.data.tags["viops.data_source"] == f"sklearn:diabetes + {triggered.conf['window']}"
    (dataset,) = trained.inputs.dataset_inputs
    assert json.loads(dataset.dataset.profile)["num_rows"] > 442  # training rows: more than all of diabetes

    # A bad version promoted by hand past the gate is rolled back by the next monitored window.
    good = str(client.get_model_version_by_alias(MODEL, "champion").version)
    stable = simulate(load_scenario(SCENARIOS / "diabetes_stable.yaml")[0].model_copy(update={"windows": 4}),
                      load_scenario(SCENARIOS / "diabetes_stable.yaml")[1], tmp_path / "deploy")
    for when in stable.windows()[:3]:  # the history that makes the next promotion a fresh deploy
        assert monitor_main(["monitor", "--model", MODEL, "--window", str(stable.path(when)), "--no-drift-report"]) == 0
    bad = train(load_config(REPO / "configs" / "demo" / "blr_diabetes.yaml",
                            parse_overrides(["model.noise={fixed: 0.1}", "train.seed=3"])), tracking_uri=uri)
    promote(client, MODEL, str(bad.model_version), reason="pytest: a bad deploy", actor="pytest", force=True)
    run = dag.test(run_conf={"window": str(stable.path(stable.windows()[3])), "drift_report": False})
    states = _states(run)
    assert run.state == "success" and states["rollback"] == "success", states
    assert {states[t] for t in ("no_action", "trigger_retrain", "page")} == {"skipped"}
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == good
    (record,) = [r for r in read_log(tmp_path / "audit.jsonl") if r["action"] == "rollback"]
    assert record["from_version"] == str(bad.model_version) and record["to_version"] == good
    assert record["actor"] == f"airflow:vi_monitoring/{run.run_id}" and record["trigger"]["incident_id"]

    # A challenger in shadow (one clean window is enough here): the deploy branch promotes it with the evidence.
    shadow = train(load_config(REPO / "configs" / "demo" / "blr_diabetes.yaml", parse_overrides(
        ["train.seed=5", "deploy.strategy=shadow", "deploy.shadow_windows=1"])), tracking_uri=uri)
    assert evaluate(client, MODEL, tracking_uri=uri, candidate=shadow.model_version).passed
    assert monitor_main(["deploy", "start", "--model", MODEL, "--version", shadow.model_version]) == 0
    fresh = simulate(load_scenario(SCENARIOS / "diabetes_stable.yaml")[0].model_copy(update={"windows": 1, "seed": 9}),
                     load_scenario(SCENARIOS / "diabetes_stable.yaml")[1], tmp_path / "shadow")
    run = dag.test(run_conf={"window": str(fresh.path(fresh.windows()[0])), "drift_report": False})
    states = _states(run)
    assert run.state == "success" and states["promote_challenger"] == "success", states
    assert {states[t] for t in ("reject_challenger", "ramp_challenger", "deploy_unchanged", "rollback")} == {"skipped"}
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == shadow.model_version
    promoted = [r for r in read_log(tmp_path / "audit.jsonl") if r["action"] == "promote"][-1]
    assert promoted["actor"] == f"airflow:vi_monitoring/{run.run_id}" and promoted["from_version"] == good
    assert [w["outcome"] for w in promoted["verdict"]["live"]["shadow"]] == ["clean"]


def test_vi_monitoring_shape(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(REPO / "dags")).get_dag("vi_monitoring")
    assert dag.get_task("decide").downstream_task_ids == {"no_action", "trigger_retrain", "rollback", "page",
                                                          "ticket"}
    assert dag.get_task("deploy").downstream_task_ids == {"promote_challenger", "reject_challenger",
                                                          "ramp_challenger", "deploy_unchanged"}
    assert dag.get_task("done").trigger_rule == "none_failed_min_one_success"
    assert dag.get_task("trigger_retrain").trigger_dag_id == "svi_retrain"
    assert dag.default_args["retries"] == 2 and dag.default_args["retry_exponential_backoff"]
