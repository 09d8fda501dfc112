"""``make demo``: the whole viops lifecycle in one command, on embedded defaults.

MLflow on SQLite and Airflow in-process (``dag.test()`` on a SQLite metadata DB), all under ``--out``
(default ``demo_out/``):

1. train the demo model (``configs/demo/blr_diabetes.yaml``); the gate checks it before it becomes champion;
2. simulate 12 hourly production windows with a covariate shift from window 6
   (``configs/scenarios/diabetes_covariate_shift.yaml``);
3. run the ``vi_monitoring`` DAG on each window. When it triggers ``svi_retrain`` (drift), the triggered run is
   executed at once: in-process Airflow has no scheduler, so the demo starts the queued run with ``dag.test`` at
   the run's logical date and with its ``conf``. The demo config says ``deploy.strategy: shadow``, so the retrained
   version goes to shadow: the next windows judge it beside the champion, and the DAG's deploy branch promotes it
   on live evidence. Before window 9 a bad version is promoted by hand past the gate; the monitoring DAG rolls it
   back. Before window 10 a version trained on label-shuffled rows passes a gate tuned loose and goes to shadow; its
   first window rejects it;
4. write ``summary.md``, ``summary.json`` and plots, and print how to open the MLflow and Airflow UIs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from viops import REPO
from viops.demo.candidates import DEMO_CONFIG, SHUFFLED_BEFORE, live_note, retrain_outcome, shuffled_candidate

SCENARIO = REPO / "configs" / "scenarios" / "diabetes_covariate_shift.yaml"
MARKER = ".viops-demo"
#: The window before which a bad version is promoted by hand (past the gate, with --force).
BAD_PROMOTION_BEFORE = 9
#: The bad version: its noise scale is fixed far below the data's, so its predictive intervals are far too narrow.
BAD_OVERRIDES = ["model.noise={fixed: 0.1}", "train.seed=3"]
def _say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def _prepare_out(out: Path) -> Path:
    """A fresh output folder: one written by an earlier demo is replaced; anything else is refused, not deleted."""
    out = out.resolve()
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise SystemExit(f"{out} exists and was not written by the viops demo; remove it or pass --out")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text("written by `make demo` (python -m viops.demo); the next demo run replaces this folder\n")
    return out


def _environment(out: Path) -> dict[str, str]:
    home = out / "airflow"
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{out / 'mlflow.db'}",
        "MLFLOW_REGISTRY_URI": f"sqlite:///{out / 'mlflow.db'}",
        "VIOPS_WORK_DIR": str(out / "work"),
        "VIOPS_AUDIT_LOG": str(out / "audit.jsonl"),
        "VIOPS_WINDOW_STORE": str(out / "windows"),
        "VIOPS_RETRAIN_CONFIG": str(DEMO_CONFIG),
        "VIOPS_MONITOR_MODEL": "blr-diabetes",
        # Every version is signed at registration and checked before it is loaded, promoted or rolled back to.
        "VIOPS_SIGNING_KEY": str(out / "keys" / "signing-key.pem"),
        "VIOPS_VERIFY_KEY": str(out / "keys" / "verify-key.pem"),
    }


@contextlib.contextmanager
def _to_log(path: Path):
    """Send this process's stdout and stderr (file descriptors 1 and 2, so Airflow's task logs, Lightning's and the
    child processes' output too) to ``path``; the terminal keeps the demo's own story."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "a") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _xcom(run, task_id: str):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.scalars(XComModel.get_many(run_id=run.run_id, dag_ids=run.dag_id, task_ids=task_id,
                                                 key="return_value")).first()
        return None if row is None else XComModel.deserialize_value(row)


def _states(run) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


def _run_dag(dag, what: str, log: Path, **kwargs):
    started = time.perf_counter()
    with _to_log(log):
        run = dag.test(**kwargs)
    states = _states(run)
    if str(run.state) != "success":
        failed = sorted(t for t, s in states.items() if s == "failed")
        raise SystemExit(f"{dag.dag_id} ({what}) ended {run.state}; failed task(s) {failed}; see {log}")
    return run, states, time.perf_counter() - started


def run_demo(out: Path) -> dict:
    started = time.perf_counter()
    out = _prepare_out(out)
    env = _environment(out)
    from pipelines.registry.signing import generate_keys

    generate_keys(out / "keys")
    os.environ.update(env)  # before Airflow is imported: it reads its configuration once
    os.chdir(out)  # MLflow experiments created by the task processes keep their artifacts in demo_out/mlruns
    log = out / "demo.log"

    from mlflow import MlflowClient

    from monitoring.scenarios import load_scenario, simulate
    from pipelines.config.loading import load_config, parse_overrides
    from pipelines.lifecycle.train import train
    from pipelines.registry.promotion import promote
    from pipelines.registry.versions import alias_version

    uri = env["MLFLOW_TRACKING_URI"]
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    config = load_config(DEMO_CONFIG)
    model = config.model_name
    client.create_experiment(config.experiment_name, artifact_location=(out / "artifacts").as_uri())

    _say("1/5 Airflow metadata DB (SQLite) for in-process runs")
    airflow = Path(sys.executable).parent / "airflow"
    migrate = subprocess.run([str(airflow), "db", "migrate"], capture_output=True, text=True, env=os.environ.copy())
    if migrate.returncode != 0:
        raise SystemExit(f"airflow db migrate failed (exit {migrate.returncode}):\n{migrate.stderr[-3000:]}")
    print(f"AIRFLOW_HOME={env['AIRFLOW_HOME']}")

    _say(f"2/5 Train the first version: {DEMO_CONFIG.relative_to(REPO)} (diabetes, full-rank SVI) -> {uri}")
    with _to_log(log):
        first = train(config, tracking_uri=uri, run_name="demo-initial-train",
                      tags={"viops.trigger_reason": "demo: the first model"})
    if "champion" not in first.aliases:
        raise SystemExit(f"the first version did not pass the gate: {first.registration}")
    print(f"version {first.model_version} is champion; run {first.run_id}, test predictive NLL "
          f"{first.metrics['test_predictive_nll']:.3f}, {first.metrics['steps']:.0f} steps")

    scenario, training = load_scenario(SCENARIO)
    _say(f"3/5 Simulate {scenario.windows} production windows of {scenario.rows_per_window} rows: covariate shift of "
         f"{', '.join(scenario.features)} by {scenario.shift:g} training SDs from window {scenario.start}")
    store = simulate(scenario, training, env["VIOPS_WINDOW_STORE"])
    windows = store.windows()
    print(f"window store {store.root}")

    _say("4/5 vi_monitoring on each window (and svi_retrain when it triggers one)")
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models import DagRun

    from viops.demo.report import window_row

    with _to_log(log):
        bag = DagBag(dag_folder=str(REPO / "dags"))
    if bag.import_errors:
        raise SystemExit(f"DAG import errors: {bag.import_errors}")
    monitoring_dag, retrain_dag = bag.get_dag("vi_monitoring"), bag.get_dag("svi_retrain")
    rows, bad_version, shuffled_version = [], None, None
    for index, when in enumerate(windows):
        event = None
        if index == SHUFFLED_BEFORE:
            with _to_log(log):
                shuffled_version, event = shuffled_candidate(client, uri, out)
            print(f"   before window {index}: {event}")
        if index == BAD_PROMOTION_BEFORE:
            with _to_log(log):
                bad = train(load_config(DEMO_CONFIG, parse_overrides(BAD_OVERRIDES)), tracking_uri=uri,
                            run_name="demo-bad-candidate", tags={"viops.trigger_reason": "demo: a hand-made candidate"})
            bad_version = str(bad.model_version)
            promote(client, model, bad_version, reason="demo: promoted by hand, past the gate",
                    actor="demo:on-call-engineer", force=True)
            event = f"v{bad_version} promoted by hand past the gate (noise fixed at 0.1)"
            print(f"   before window {index}: {event}")
        path = store.path(when)
        run, states, seconds = _run_dag(monitoring_dag, f"window {index}", log, run_conf={"window": str(path)})
        row = {**window_row(_xcom(run, "monitor")), "index": index, "event_before": event,
               "phase": "shifted" if index >= scenario.start else "stable",
               "airflow": {"vi_monitoring": run.run_id}, "seconds": round(seconds, 1)}
        if states.get("trigger_retrain") == "success":
            (queued,) = DagRun.find(dag_id="svi_retrain", run_id=[f"monitor__{row['incident_id']}"])
            row["airflow"]["triggered"] = queued.run_id
            retrain, retrain_states, retrain_seconds = _run_dag(
                retrain_dag, f"triggered by window {index}", log, logical_date=queued.logical_date,
                run_conf=queued.conf)
            row["airflow"]["svi_retrain"] = retrain.run_id
            row["retrain"] = {"outcome": retrain_outcome(retrain_states), "seconds": round(retrain_seconds, 1),
                              **(_xcom(retrain, "register") or {})}
        if states.get("rollback") == "success":
            row["rollback"] = _xcom(run, "rollback")
        row["champion_after"] = alias_version(client, model, "champion")
        rows.append(row)
        print(f"   window {index:>2} {row['window']} {row['phase']:<7} drift share {row['drift_share'] or 0:.2f}  "
              f"coverage90 {_fmt(row['calibration']['coverage_90'])}  -> {row['action']:<8}"
              f"{' (' + row['alert'] + ')' if row['alert'] else '':<42} champion v{row['champion_after']}"
              f"{live_note(row)}  [{row['seconds'] + row.get('retrain', {}).get('seconds', 0):.0f}s]", flush=True)

    _say("5/5 Summary and plots")
    from viops.demo.report import write_report

    mlflow_ui = f"{Path(sys.executable).parent / 'mlflow'} ui --backend-store-uri {uri} --port 5000"
    airflow_ui = " ".join([
        *(f"{k}={env[k]}"
          for k in ("AIRFLOW_HOME", "AIRFLOW__CORE__DAGS_FOLDER", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN")),
        "AIRFLOW__CORE__LOAD_EXAMPLES=False AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS=True",
        f"{Path(sys.executable).parent / 'airflow'} api-server --port 8080"])
    summary = write_report(out, client, model=model, rows=rows, scenario=scenario, first_version=first.model_version,
                           bad_version=bad_version, bad_before=BAD_PROMOTION_BEFORE,
                           seconds=time.perf_counter() - started, mlflow_ui=mlflow_ui, airflow_ui=airflow_ui,
                           shuffled_version=shuffled_version, shuffled_before=SHUFFLED_BEFORE)
    for check in summary["checks"]:
        print(f"  [{'ok' if check['ok'] else 'FAILED'}] {check['what']}")
    _say("Where to look")
    print(f"  Summary:    {out / 'summary.md'}  (and summary.json, plots/*.png)")
    print(f"  MLflow UI:  {mlflow_ui}")
    print("              then open http://127.0.0.1:5000 (experiments blr-diabetes, viops-incidents, viops-audit)")
    print(f"  Airflow UI: {airflow_ui}")
    print("              then open http://127.0.0.1:8080 (DAGs vi_monitoring and svi_retrain; they stay paused)")
    print(f"  Took {summary['seconds']:.0f} s")
    return summary


def _fmt(value) -> str:
    return "  -  " if value is None else f"{value:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_out", help="folder for everything the demo writes (replaced)")
    args = parser.parse_args(argv)
    from viops.cli import quiet_libraries

    quiet_libraries()
    summary = run_demo(Path(args.out))
    return 0 if all(check["ok"] for check in summary["checks"]) else 1


if __name__ == "__main__":
    sys.exit(main())
