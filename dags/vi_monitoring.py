"""vi_monitoring: one window -> `viops monitor` -> branch(none | ticket | retrain | rollback | page) -> done.

Hourly (or on `$VIOPS_MONITOR_SCHEDULE`), a scheduled run monitors the window of its data interval in the window
store (`$VIOPS_WINDOW_STORE`): the newest window that starts inside `[data_interval_start, data_interval_end)`, and
fails, saying so, when that window is not in the store yet (a retry picks it up once it lands). So
`airflow backfill create --dag-id vi_monitoring --from-date ... --to-date ...` monitors past hours' windows, each in
its own run, in order (`max_active_runs=1`). Triggered with `{"window": "<path to a window file>"}`, it monitors
that window; with `{"window": "2026-01-01T05:00:00Z"}` (a window key, as `viops alert-receiver` sends for an alert
Prometheus fired, with the alert in `conf.alert`), that window of the store; triggered without one and without a
data interval, the newest window of the store.
The `monitor` task runs what `viops monitor --dispatched` runs, in the task's own process (no child process to
start, so a worker that runs many windows imports Evidently, MLflow and torch once): it scores the window with the
champion, runs the checks, evaluates the SLOs, pushes metrics and decides, recording that this DAG carries the
decision out. Its XCom is the command's JSON result. The branch then carries out the decision (those tasks make the
library calls behind the `viops` commands named, in their own process, and return the same JSON results):

- `retrain` triggers `svi_retrain` with a `conf` carrying the reason, the incident id and the window. The run id is
  derived from the incident id, so a retried task finds the run it already created.
- `rollback` does what `viops rollback` does (and pushes the change to `$VIOPS_PUSHGATEWAY`, as it does); it is
  idempotent: a retry reports the rollback already done.
- `page` and `ticket` record the page or ticket with its runbook link (`pages.jsonl`, `tickets.jsonl`), and change
  nothing.

A re-run of `monitor` on the same window takes the same decision and keeps the same incident id. A window the
champion cannot score (missing feature columns, a broken file) fails `monitor` at once, without retries: a retry
would read the same file. An unreachable tracking server, or a window not landed yet, is retried.

Beside it, the `deploy` branch carries out what the monitor decided about a challenger deployed live (shadow or
canary; docs/deployment.md): `promote_challenger` (`viops promote` with the live windows' evidence),
`reject_challenger` (`viops deploy reject`: a rejection, or a canary rolled back), `ramp_challenger`
(`viops deploy ramp`: a canary to its next traffic share) or `deploy_unchanged`.

With `act` false (`$VIOPS_MONITOR_ACTS=false`, as in the distributed profile) a run measures, pushes and decides,
records the decision as pending and takes the `no_action` branch: Prometheus evaluates the pushed results, and the
alerts it fires reach `viops alert-receiver`, which triggers the run that acts (`act: true`) on the same window.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import CronDataIntervalTimetable, ExceptionRetryPolicy, Param, RetryAction, RetryRule, dag, task

#: A failure that a retry repeats (pipelines.errors.NotRetryable: bad data or config, a refused signature, a diverged
#: fit, a rejected promotion, a registry request that cannot be carried out) fails the task at once; any other
#: failure is retried.
NOT_RETRYABLE_FAILS = ExceptionRetryPolicy(rules=[RetryRule(
    exception="pipelines.errors.NotRetryable", action=RetryAction.FAIL, reason="a retry would fail the same way")])
DEFAULT_MODEL = os.environ.get("VIOPS_MONITOR_MODEL", "blr-diabetes")
DEFAULT_STORE = os.environ.get("VIOPS_WINDOW_STORE", "")
#: Whether a run carries out its decision. The distributed profile sets "false": its runs measure, push and
#: decide, and the alerts Prometheus fires on what they pushed start the run that acts (through viops
#: alert-receiver, which triggers with act=true).
ACTS = os.environ.get("VIOPS_MONITOR_ACTS", "true").strip().lower() not in ("false", "0", "no")
#: How often a window is monitored (cron or preset); "none": only when triggered with a window.
SCHEDULE = os.environ.get("VIOPS_MONITOR_SCHEDULE", "@hourly").strip()
ACTIONS = {"none": "no_action", "ticket": "ticket", "retrain": "trigger_retrain", "rollback": "rollback",
           "page": "page"}
#: A challenger's deployment decision -> the task that carries it out (anything else: deploy_unchanged).
DEPLOY_ACTIONS = {"promote": "promote_challenger", "reject": "reject_challenger", "ramp": "ramp_challenger"}


def _schedule():
    """Cron with data intervals: the run for [00:00, 01:00) starts after 01:00 and monitors the window of that hour.
    (Airflow 3's plain cron schedule gives runs an empty data interval at their trigger time.)"""
    if SCHEDULE.lower() in ("", "none"):
        return None
    return CronDataIntervalTimetable(SCHEDULE, timezone=os.environ.get("VIOPS_MONITOR_TIMEZONE", "UTC"))


@dag(
    dag_id="vi_monitoring",
    schedule=_schedule(),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30), "retry_exponential_backoff": True,
                  "retry_policy": NOT_RETRYABLE_FAILS},
    params={
        "model": Param(DEFAULT_MODEL, type="string", description="registered model to watch"),
        "alias": Param("champion", type="string"),
        "window": Param("", type="string", description="window file, or a window key (2026-01-01T05:00:00Z) of the "
                                                       "store; empty: the window of the data interval, else the "
                                                       "newest"),
        "store": Param(DEFAULT_STORE, type="string", description="window store (default $VIOPS_WINDOW_STORE)"),
        "drift_report": Param(True, type="boolean",
                              description="write the window's Evidently drift report beside it in the store"),
        "alert": Param({}, type="object", description="the Alertmanager alerts that started this run (set by "
                                                      "viops alert-receiver: alerts, runbooks, fingerprints)"),
        "act": Param(ACTS, type="boolean", description="carry out the decision (default $VIOPS_MONITOR_ACTS); "
                                                       "false: record it as pending and leave it to the alert path"),
    },
    tags=["viops", "monitoring"],
    doc_md=__doc__,
)
def vi_monitoring():
    @task
    def monitor(params=None, data_interval_start=None, data_interval_end=None) -> dict:
        window = _window_file(params["store"], params["window"]) if params["window"] else _window_of(
            params["store"], data_interval_start, data_interval_end)
        from monitoring.monitor import monitor_files
        from pipelines.registry.audit import default_actor

        # A run that acts carries out the decision (the branch below): the monitor records it as dispatched, so
        # cooldowns count it; one that does not records it as pending. The deploy branch carries out a challenger's
        # promotion or rejection, whatever `act` says: a shadow verdict is a rollout step, which no alert would start.
        return monitor_files(model=params["model"], alias=params["alias"], window_path=window,
                             dispatched=bool(params.get("act", True)), deploy_dispatched=True,
                             drift_report=bool(params.get("drift_report", True)), actor=default_actor(),
                             pushgateway=os.environ.get("VIOPS_PUSHGATEWAY"))

    @task.branch
    def decide(result: dict, params=None) -> str:
        return ACTIONS[result["decision"]["action"]] if params.get("act", True) else "no_action"

    @task
    def no_action(result: dict, params=None) -> str:
        if not params.get("act", True) and result["decision"]["action"] != "none":
            return f"{result['decision']['action']} left to the alert path (act=false): {result['decision']['reason']}"
        return result["decision"]["reason"]

    @task
    def rollback(result: dict, dag_run=None) -> dict:
        from pipelines.registry.promotion import rollback

        reason = f"{result['decision']['alert']} on window {result['window']}: {result['decision']['reason']}"
        client, audited = _client(), _audited(result, dag_run)
        return _pushed(rollback(client, result["model"], reason=reason, **audited).to_json())

    @task.branch
    def deploy(result: dict) -> str:
        action = ((result.get("deploy") or {}).get("decision") or {}).get("action")
        return DEPLOY_ACTIONS.get(action, "deploy_unchanged")

    @task
    def promote_challenger(result: dict, dag_run=None) -> dict:
        from pipelines.registry.promotion import promote

        shadow = result["deploy"]
        change = promote(_client(), result["model"], shadow["version"],
                         reason=f"live evidence: {shadow['decision']['reason']}", evidence=shadow["audit_evidence"],
                         **_audited(result, dag_run))
        return _pushed(change.to_json())

    @task
    def reject_challenger(result: dict, dag_run=None) -> dict:
        from pipelines.registry.deployment import reject

        shadow = result["deploy"]
        return reject(_client(), result["model"], shadow["version"], reasons=shadow["decision"]["rejection_reasons"],
                      evidence=shadow["audit_evidence"], **_audited(result, dag_run))

    @task
    def ramp_challenger(result: dict) -> dict:
        from pipelines.registry.deployment import ramp

        shadow = result["deploy"]
        return ramp(_client(), result["model"], shadow["version"], int(shadow["decision"]["next_step"]))

    @task
    def deploy_unchanged(result: dict) -> str:
        shadow = result.get("deploy")
        if not shadow:
            return "no challenger deployed live"
        return shadow.get("error") or shadow["decision"]["reason"]

    @task
    def page(result: dict) -> dict:
        return _notify(result, "page")

    @task
    def ticket(result: dict) -> dict:
        return _notify(result, "ticket")

    result = monitor()
    trigger_retrain = TriggerDagRunOperator(
        task_id="trigger_retrain",
        trigger_dag_id="svi_retrain",
        trigger_run_id="monitor__{{ ti.xcom_pull(task_ids='monitor')['incident_id'] }}",
        conf={
            "reason": "{{ ti.xcom_pull(task_ids='monitor')['decision']['alert'] }} on window "
                      "{{ ti.xcom_pull(task_ids='monitor')['window'] }}",
            "incident_id": "{{ ti.xcom_pull(task_ids='monitor')['incident_id'] }}",
            "window": "{{ ti.xcom_pull(task_ids='monitor')['window_path'] }}",
            "window_id": "{{ ti.xcom_pull(task_ids='monitor')['window'] }}",
        },
        skip_when_already_exists=True,
    )

    @task(trigger_rule="none_failed_min_one_success")
    def done(ti=None) -> str:
        return ti.xcom_pull(task_ids="monitor")["decision"]["action"]

    branches = [no_action(result), trigger_retrain, rollback(result), page(result), ticket(result)]
    decide(result) >> branches
    rollout = [promote_challenger(result), reject_challenger(result), ramp_challenger(result),
               deploy_unchanged(result)]
    deploy(result) >> rollout
    [*branches, *rollout] >> done()


def _client():
    """The registry client of ``$MLFLOW_TRACKING_URI`` (else local SQLite) with viops' request budget, as the
    ``viops`` commands make it."""
    from mlflow import MlflowClient

    from pipelines.tracking import bound_request_time, resolve_tracking_uri

    bound_request_time()
    uri = resolve_tracking_uri(None)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _audited(result: dict, dag_run) -> dict:
    """Who acts and why, for a call that changes the registry: this run, the incident, the window."""
    from pipelines.workspace import audit_log

    trigger = {"dag_id": dag_run.dag_id, "run_id": dag_run.run_id, "incident_id": result["incident_id"],
               "window": result["window"]}
    return {"actor": f"airflow:{dag_run.dag_id}/{dag_run.run_id}", "trigger": trigger, "audit_log": audit_log()}


def _pushed(change: dict) -> dict:
    """A champion change as ``viops promote`` / ``rollback`` report it, after pushing it to ``$VIOPS_PUSHGATEWAY``."""
    from monitoring.events import push_change

    return {**change, "pushed": push_change(change, os.environ.get("VIOPS_PUSHGATEWAY"))}


def _window_file(store_root: str, window: str) -> str:
    """``conf.window``: a file as given, or a window key resolved in the store."""
    from monitoring.windows import WindowStore, parse_window_key

    try:
        when = parse_window_key(window)
    except ValueError:
        return window  # a path
    path = WindowStore(store_root).path(when)
    if not path.exists():
        raise ValueError(f"window {window} is not in store {store_root!r}: no {path}")
    return str(path)


def _window_of(store_root: str, start, end) -> str:
    """The window file a run without ``conf.window`` monitors: that of its data interval, else the newest one."""
    from monitoring.windows import WindowStore, window_key

    store = WindowStore(store_root)
    present = store.windows()
    if not present:
        raise ValueError(f"no window to monitor: give conf.window, or windows in store {store.root!r}")
    if start is None or end is None or start == end:  # a manual run without a data interval: the newest window
        return str(store.path(present[-1]))
    when = store.window_in(start, end)
    if when is None:
        raise ValueError(f"no window of the data interval [{window_key(start)}, {window_key(end)}) in store "
                         f"{store.root!r} (it holds {window_key(present[0])} to {window_key(present[-1])}); "
                         f"a retry monitors it once it lands")
    return str(store.path(when))


def _notify(result: dict, kind: str) -> dict:
    """Record a page or ticket (``pages.jsonl`` / ``tickets.jsonl`` in the work dir) with its runbook; change nothing.
    The monitor has already written the incident and exported ``viops_decision``."""
    import logging

    from pipelines.registry.audit import utc_now
    from pipelines.workspace import work_dir

    record = {"time": utc_now(), "model": result["model"], "window": result["window"],
              "incident_id": result["incident_id"], "alert": result["decision"]["alert"],
              "runbook": result["decision"]["runbook"], "reason": result["decision"]["reason"]}
    with open(work_dir() / f"{kind}s.jsonl", "a") as handle:
        handle.write(json.dumps(record) + "\n")
    log = logging.getLogger(f"viops.{kind}")
    (log.error if kind == "page" else log.warning)("%s %s: %s (runbook %s)", kind.upper(), record["alert"],
                                                    record["reason"], record["runbook"])
    return record


vi_monitoring()
