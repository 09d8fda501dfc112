"""``make demo-cluster``: the ``make demo`` story through the distributed profile, with no ``dag.test()``.

``viops stack up`` starts MLflow on PostgreSQL, Airflow with the CeleryExecutor (a default and a ``gpu`` worker),
Pushgateway, Prometheus, Alertmanager and the alert receiver under ``--out``/stack, on fresh databases. Then:

1. train the demo model through the tracking server (artifacts proxied by it);
2. simulate the 12 windows of ``configs/scenarios/diabetes_covariate_shift.yaml`` into the stack's window store;
3. for each window, trigger ``vi_monitoring`` through the REST API (``act=false``: it measures, pushes, decides and
   leaves the action to the alert path). The scheduler runs it on the Celery workers; Prometheus evaluates what it
   pushed; the alerts it fires go through Alertmanager to the receiver, which triggers the run that acts; a retrain
   it triggers runs ``train`` on the ``gpu`` queue and ends with the version in shadow; the deploy branch of the
   observing runs promotes it on live evidence. Before window 9 a bad version is promoted by hand past the gate;
   before window 10 a retrain on label-shuffled rows goes to shadow, and the deploy branch rejects it;
4. write ``summary.json`` and ``summary.md``: the executor and metadata stores read from the services, the queue and
   worker of each training, the alerts received from Alertmanager and the runs they triggered, the per-window
   decisions, and the checks of ``make demo``; exit 1 if one fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from viops.demo.candidates import SHUFFLED_BEFORE, retrain_outcome, shuffled_candidate
from viops.demo.lifecycle import (
    BAD_OVERRIDES,
    BAD_PROMOTION_BEFORE,
    DEMO_CONFIG,
    SCENARIO,
    _prepare_out,
    _say,
    _to_log,
)
from viops.demo.stack_client import ALERT_TIMEOUT_S, RUN_TIMEOUT_S, StackClient, until

__all__ = ["run_cluster_demo", "main"]


def _profile(out: Path):
    from viops.stack import load_profile

    base = load_profile()
    return base.model_copy(update={
        "dir": out / "stack",
        "databases": base.databases.model_copy(update={"airflow": "viops_demo_airflow", "mlflow": "viops_demo_mlflow"}),
        "prometheus": base.prometheus.model_copy(update={"scrape_interval": "2s", "evaluation_interval": "2s"}),
        "alertmanager": base.alertmanager.model_copy(update={"group_wait": "1s", "group_interval": "5s"}),
        "env": {**base.env, "VIOPS_AUDIT_LOG": str(out / "audit.jsonl"), "VIOPS_RETRAIN_CONFIG": str(DEMO_CONFIG),
                "VIOPS_MONITOR_MODEL": "blr-diabetes", "VIOPS_SIGNING_KEY": str(out / "keys" / "signing-key.pem"),
                "VIOPS_VERIFY_KEY": str(out / "keys" / "verify-key.pem")},
    })


def _monitor_window(cluster: StackClient, index: int, when, key: str, model: str) -> dict:
    """One window: the observing run, the alerts Prometheus fires on it, and the run they trigger (and its
    retrain); the row of ``make demo``'s table plus where each step ran."""
    observe_id = f"demo__{index:02d}"
    cluster.api.trigger("vi_monitoring", observe_id, {"window": key, "act": False})
    cluster.finished("vi_monitoring", observe_id)
    result = observed = cluster.xcom("vi_monitoring", observe_id, "monitor")
    start = when.timestamp()
    until(f"Prometheus to scrape window {key}", lambda: cluster.firing_for(model, start) is not None,
           ALERT_TIMEOUT_S)
    time.sleep(5)  # two more evaluations after the scrape that brought the window's values
    firing = cluster.firing_for(model, start) or []
    runs = {"observe": observe_id}
    received = []
    if firing:
        received = until(f"the alert receiver to act on window {key}",
                          lambda: [r for r in cluster.received(key) if r.get("dag_run")], ALERT_TIMEOUT_S)
        acting = received[0]["dag_run"]["dag_run_id"]
        runs["alert"] = acting
        cluster.finished("vi_monitoring", acting)
        result = cluster.xcom("vi_monitoring", acting, "monitor")
        states = {t: i["state"] for t, i in cluster.tasks("vi_monitoring", acting).items()}
        if states.get("trigger_retrain") == "success":
            runs["svi_retrain"] = runs["triggered"] = f"monitor__{result['incident_id']}"
    from viops.demo.report import deploy_entry, window_row

    # The observing run's deploy branch judged the live challenger and carried its decision out (a run that acts
    # later on the same window finds it already promoted or rejected).
    row = {**window_row(result), "deploy": deploy_entry(observed), "airflow": runs, "prometheus_firing": firing,
           "alerts_received": [{k: r[k] for k in ("alertname", "fingerprint", "starts_at", "receiver")}
                               for r in received]}
    if "svi_retrain" in runs:
        retrain = cluster.finished("svi_retrain", runs["svi_retrain"], RUN_TIMEOUT_S * 2)
        tasks = cluster.tasks("svi_retrain", retrain["dag_run_id"])
        row["retrain"] = {"outcome": retrain_outcome({t: i["state"] for t, i in tasks.items()}),
                          "train_queue": tasks["train"]["queue"], "train_hostname": tasks["train"]["hostname"],
                          **(cluster.xcom("svi_retrain", retrain["dag_run_id"], "register") or {})}
    if row["action"] == "rollback" and "alert" in runs:
        row["rollback"] = cluster.xcom("vi_monitoring", runs["alert"], "rollback")
    return row


def run_cluster_demo(out: Path, *, keep: bool = False) -> dict:
    started, began = time.perf_counter(), time.time()
    out = _prepare_out(out)
    profile = _profile(out)
    from mlflow import MlflowClient

    from monitoring.scenarios import load_scenario, simulate
    from pipelines.config.loading import load_config, parse_overrides
    from pipelines.lifecycle.train import train
    from pipelines.registry.promotion import promote
    from pipelines.registry.signing import generate_keys
    from pipelines.registry.versions import alias_version
    from pipelines.tracking import redact
    from viops.stack.databases import drop_database
    from viops.stack.run import down, up
    from viops.stack.services import StackError

    generate_keys(out / "keys")
    for name in (profile.databases.airflow, profile.databases.mlflow):
        drop_database(profile.postgres, name)  # the story starts from empty stores
    _say(f"1/5 viops stack up: services of configs/profiles/distributed under {profile.dir} (logs in logs/)")
    try:
        stack = up(profile)
    except StackError as exc:
        down(profile)
        raise SystemExit(f"the stack did not start: {exc}") from None
    try:
        for name, entry in stack.describe().items():
            print(f"   {name:<22} {entry['url'] or '-':<24} pid {entry['pid']}")
        cluster = StackClient(profile)
        uri = profile.url("mlflow")
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        _say(f"2/5 Train the first version through {uri} (PostgreSQL behind it, artifacts proxied)")
        import os

        os.environ.update({k: v for k, v in profile.env.items() if k.startswith("VIOPS_")})
        with _to_log(out / "demo.log"):
            first = train(load_config(DEMO_CONFIG), tracking_uri=uri, run_name="demo-initial-train",
                          tags={"viops.trigger_reason": "demo: the first model"})
        if "champion" not in first.aliases:
            raise SystemExit(f"the first version did not pass the gate: {first.registration}")
        scenario, training = load_scenario(SCENARIO)
        _say(f"3/5 Simulate {scenario.windows} windows into {profile.windows()}")
        store = simulate(scenario, training, profile.windows())
        _say("4/5 Each window: vi_monitoring (Celery) -> Prometheus -> Alertmanager -> receiver -> the run that acts")
        rows, bad_version, shuffled_version = [], None, None
        for index, when in enumerate(store.windows()):
            event = None
            if index == SHUFFLED_BEFORE:
                with _to_log(out / "demo.log"):
                    shuffled_version, event = shuffled_candidate(client, uri, out)
                print(f"   before window {index}: {event}")
            if index == BAD_PROMOTION_BEFORE:
                with _to_log(out / "demo.log"):
                    bad = train(load_config(DEMO_CONFIG, parse_overrides(BAD_OVERRIDES)), tracking_uri=uri,
                                run_name="demo-bad-candidate",
                                tags={"viops.trigger_reason": "demo: a hand-made candidate"})
                bad_version = str(bad.model_version)
                promote(client, first.model_name, bad_version, reason="demo: promoted by hand, past the gate",
                        actor="demo:on-call-engineer", force=True)
                event = f"v{bad_version} promoted by hand past the gate (noise fixed at 0.1)"
                print(f"   before window {index}: {event}")
            t0 = time.perf_counter()
            row = _monitor_window(cluster, index, when, store.path(when).parent.name.removeprefix("window="),
                                  first.model_name)
            row.update(index=index, phase="shifted" if index >= scenario.start else "stable", event_before=event,
                       champion_after=alias_version(client, first.model_name, "champion"),
                       seconds=round(time.perf_counter() - t0, 1))
            rows.append(row)
            where = f" train on {row['retrain']['train_queue']}" if "retrain" in row else ""
            print(f"   window {index:>2} {row['window']} alerts {','.join(row['prometheus_firing']) or '-':<60.60} "
                  f"-> {row['action']:<8} champion v{row['champion_after']}{where}  [{row['seconds']:.0f}s]",
                  flush=True)
        _say("5/5 Summary")
        from viops.demo.report import write_report
        from viops.stack.components import airflow_env

        summary = write_report(out, client, model=first.model_name, rows=rows, scenario=scenario,
                               first_version=first.model_version, bad_version=bad_version,
                               bad_before=BAD_PROMOTION_BEFORE, seconds=time.perf_counter() - started,
                               mlflow_ui=uri, airflow_ui=profile.url("airflow"), scheduler=True,
                               shuffled_version=shuffled_version, shuffled_before=SHUFFLED_BEFORE)
        env = airflow_env(profile)
        summary["cluster"] = {
            "executor": _airflow_config(env, "core", "executor"),
            "airflow_db": redact(_airflow_config(env, "database", "sql_alchemy_conn")),
            "mlflow_backend": redact(next(a for a in stack.state()["services"]["mlflow"]["argv"]
                                          if a.startswith("postgresql"))),
            "celery_broker": redact(_airflow_config(env, "celery", "broker_url")),
            "trainings": [{"window": r["index"], "queue": r["retrain"]["train_queue"],
                           "hostname": r["retrain"]["train_hostname"], "dag_run": r["airflow"]["svi_retrain"],
                           "worker": _worker(client, r["retrain"].get("model_name"),
                                             r["retrain"].get("model_version"))}
                          for r in rows if "retrain" in r],
            "alerts_received": [{"window": r["index"], **a, "dag_run": r["airflow"].get("alert")}
                                for r in rows for a in r["alerts_received"]],
            "decisions": [r["action"] for r in rows],
        }
        summary["dashboards"] = _dashboards(profile.url("prometheus"), began, out)
        summary["checks"] += _cluster_checks(summary["cluster"]) + [
            {"what": f"every dashboard query returned data ({summary['dashboards']['queries']} queries; PNG "
                     f"snapshots in dashboards/)", "ok": not summary["dashboards"]["without_data"]}]
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        for check in summary["checks"]:
            print(f"  [{'ok' if check['ok'] else 'FAILED'}] {check['what']}")
        print(f"  Summary: {out / 'summary.json'}; took {time.perf_counter() - started:.0f} s")
        return summary
    finally:
        if keep:
            print(f"  The stack keeps running (--keep): Airflow {profile.url('airflow')}, MLflow "
                  f"{profile.url('mlflow')}, Prometheus {profile.url('prometheus')}; stop it with: viops stack down "
                  f"--dir {profile.dir}")
        else:
            down(profile)


def _dashboards(prometheus: str, began: float, out: Path) -> dict:
    """Every panel's and annotation's query over the demo's time range, and the PNG snapshots of the views."""
    from monitoring.dashboard_snapshots import query_range, snapshot_all
    from monitoring.dashboards import VIEWS, queries

    end = time.time()
    asked = [(view.uid, title, expr) for view in VIEWS for title, expr in queries(view)]
    empty = [f"{uid}: {title}" for uid, title, expr in asked if not query_range(prometheus, expr, began, end, 5)]
    pngs = snapshot_all(prometheus, began, end, out / "dashboards")
    return {"queries": len(asked), "without_data": empty, "snapshots": [str(p.relative_to(out)) for p in pngs]}


def _worker(client, model: str | None, version) -> str | None:
    """The Celery worker that trained the version (the train task tags its MLflow run with it)."""
    if not model or version is None:
        return None
    run_id = client.get_model_version(model, str(version)).run_id
    return client.get_run(run_id).data.tags.get("viops.airflow.worker")


def _airflow_config(env: dict, section: str, key: str) -> str:
    import subprocess

    done = subprocess.run([str(Path(sys.executable).parent / "airflow"), "config", "get-value", section, key],
                          env=env, capture_output=True, text=True, timeout=120)
    return done.stdout.strip() or f"(airflow config failed: {done.stderr.strip()[-200:]})"


def _cluster_checks(cluster: dict) -> list[dict]:
    return [
        {"what": f"Airflow runs the {cluster['executor']}", "ok": cluster["executor"] == "CeleryExecutor"},
        {"what": "Airflow's and MLflow's metadata in PostgreSQL",
         "ok": cluster["airflow_db"].startswith("postgresql") and cluster["mlflow_backend"].startswith("postgresql")},
        {"what": f"every training ran on the gpu queue's worker ({len(cluster['trainings'])})",
         "ok": bool(cluster["trainings"]) and all(t["queue"] == "gpu" and (t["worker"] or "").startswith("gpu@")
                                                  for t in cluster["trainings"])},
        {"what": f"alerts delivered by Alertmanager triggered DAG runs ({len(cluster['alerts_received'])} received)",
         "ok": any(a["dag_run"] for a in cluster["alerts_received"])},
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_cluster_out", help="folder for everything the demo writes (replaced)")
    parser.add_argument("--keep", action="store_true", help="leave the stack running afterwards (for the UIs)")
    args = parser.parse_args(argv)
    from viops.cli import quiet_libraries

    quiet_libraries()
    summary = run_cluster_demo(Path(args.out), keep=args.keep)
    return 0 if all(check["ok"] for check in summary["checks"]) else 1


if __name__ == "__main__":
    from viops.process import run_as_process

    run_as_process(main)
