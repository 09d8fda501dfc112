"""svi_retrain: prepare -> train -> register -> evaluate -> branch(promote | deploy_live | reject) -> notify.

Runs weekly, when the training-data Asset gets an event, or on demand with a ``conf`` such as
``{"reason": "drift on window 2026-11-23T10"}``; the reason is tagged on the MLflow run and carried into the audit
record of a promotion. ``vi_monitoring`` triggers it with ``{"reason", "incident_id", "window"}``: the window's
labelled rows (finite features and target) are added to the configured training data before the split.

Training runs the viops CLI in a child process (Lightning's DDP launcher re-executes it; a crash stays there); the
new version is registered as ``challenger``, the gate scores it against the champion on its held-out split, and only
a version that passes becomes ``champion`` (docs/lifecycle.md); under ``deploy.strategy`` shadow or canary it is
deployed live instead, and vi_monitoring promotes or rejects it on live windows (docs/deployment.md).

Each task is one step of :mod:`pipelines.lifecycle.retrain`, the same steps ``viops monitor --execute`` runs; all but
training are library calls in the task's own process, and the gate's verdict and a promotion are pushed to
``$VIOPS_PUSHGATEWAY`` as ``viops evaluate`` and ``viops promote`` push them.
Retries are safe: prepared data is keyed by the Airflow run id, registration is idempotent per MLflow run, and
promoting the current champion again changes nothing. A task fails at once, without retries, when a retry would fail
the same way (bad data or config, a diverged fit, a refused signature, a promotion the gate rejects, a registry
request that cannot be carried out).
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import Asset, ExceptionRetryPolicy, Param, RetryAction, RetryRule, dag, task
from airflow.timetables.assets import AssetOrTimeSchedule
from airflow.timetables.trigger import CronTriggerTimetable

#: A failure that a retry repeats (pipelines.errors.NotRetryable: bad data or config, a refused signature, a diverged
#: fit, a rejected promotion, a registry request that cannot be carried out) fails the task at once; any other
#: failure is retried.
NOT_RETRYABLE_FAILS = ExceptionRetryPolicy(rules=[RetryRule(
    exception="pipelines.errors.NotRetryable", action=RetryAction.FAIL, reason="a retry would fail the same way")])
DEFAULT_CONFIG = os.environ.get(
    "VIOPS_RETRAIN_CONFIG", str(Path(__file__).resolve().parent.parent / "configs" / "demo" / "blr_diabetes.yaml")
)
#: Producers of new labelled training data emit this asset (an `outlets=[TRAINING_DATA]` task, or the REST API's
#: asset events); each event schedules a retrain, on top of the weekly one.
TRAINING_DATA = Asset(os.environ.get("VIOPS_TRAINING_DATA_ASSET", "viops://training-data/blr-diabetes"))
#: The time-based schedule besides the Asset (cron or preset); "none": only when data lands or on demand.
RETRAIN_SCHEDULE = os.environ.get("VIOPS_RETRAIN_SCHEDULE", "@weekly").strip()
#: Where training runs: a Celery queue served by GPU workers (e.g. `gpu`) and a pool bounding concurrent fits.
TRAIN_QUEUE = os.environ.get("VIOPS_TRAIN_QUEUE", "default")
TRAIN_POOL = os.environ.get("VIOPS_TRAIN_POOL", "default_pool")
#: KubernetesExecutor: a pod override for the train task, e.g. configs/airflow/gpu_pod_override.yaml (one GPU).
TRAIN_POD_OVERRIDE = os.environ.get("VIOPS_TRAIN_POD_OVERRIDE", "")


def _train_executor_config() -> dict:
    if not TRAIN_POD_OVERRIDE:
        return {}
    if not Path(TRAIN_POD_OVERRIDE).is_file():
        raise FileNotFoundError(f"VIOPS_TRAIN_POD_OVERRIDE={TRAIN_POD_OVERRIDE}: no such pod override file")
    # The provider's own reader, as for pod_template_file: a V1Pod the executor merges into the worker pod.
    from airflow.providers.cncf.kubernetes.pod_generator import PodGenerator

    return {"pod_override": PodGenerator.deserialize_model_file(TRAIN_POD_OVERRIDE)}


def _request(params, run_id: str, trigger: dict | None = None, actor: str | None = None):
    """The run's retrain, as :mod:`pipelines.lifecycle.retrain` takes it (the same one ``viops monitor --execute``
    builds)."""
    from pipelines.lifecycle.retrain import RetrainRequest
    from pipelines.workspace import audit_log, safe_key, work_dir

    return RetrainRequest(
        config=params["config"], reason=params["reason"], workdir=str(work_dir() / "svi_retrain" / safe_key(run_id)),
        overrides=tuple(params.get("overrides") or ()), window=params.get("window") or None,
        run_name=f"svi_retrain/{run_id}", actor=actor, audit_log=str(audit_log()), trigger=trigger or {},
    )


@dag(
    dag_id="svi_retrain",
    schedule=[TRAINING_DATA] if RETRAIN_SCHEDULE.lower() in ("", "none") else AssetOrTimeSchedule(
        timetable=CronTriggerTimetable(RETRAIN_SCHEDULE, timezone="UTC"), assets=[TRAINING_DATA]),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30), "retry_exponential_backoff": True,
                  "retry_policy": NOT_RETRYABLE_FAILS},
    params={
        "reason": Param("scheduled retrain (weekly, or new training data)", type="string",
                        description="why this retrain runs"),
        "config": Param(DEFAULT_CONFIG, type="string", description="viops training config (YAML)"),
        "overrides": Param([], type="array", description="dotted.key=value config overrides"),
        "window": Param("", type="string",
                        description="a production window file whose labelled rows join the training data"),
        "incident_id": Param("", type="string", description="the viops incident that asked for this retrain"),
    },
    tags=["viops", "training"],
    doc_md=__doc__,
)
def svi_retrain():
    @task
    def prepare_data(params=None, run_id=None) -> dict:
        from pipelines.lifecycle.retrain import prepare_data

        return prepare_data(_request(params, run_id))

    @task(queue=TRAIN_QUEUE, pool=TRAIN_POOL, executor_config=_train_executor_config())
    def train(prepared: dict, params=None, run_id=None, ti=None) -> dict:
        import dataclasses
        import socket

        from pipelines.lifecycle.retrain import train_candidate

        # Where it ran, on the MLflow run: the queue, and the worker ($VIOPS_WORKER_NAME names a Celery worker).
        where = (f"viops.airflow.queue={ti.queue}", f"viops.airflow.worker="
                 f"{os.environ.get('VIOPS_WORKER_NAME') or socket.gethostname()}", f"viops.airflow.run_id={run_id}")
        return train_candidate(dataclasses.replace(_request(params, run_id), tags=where), prepared)

    @task
    def register(trained: dict, params=None, run_id=None) -> dict:
        from pipelines.lifecycle.retrain import register_candidate

        return register_candidate(_request(params, run_id), trained)

    @task
    def evaluate(registered: dict, params=None, run_id=None) -> dict:
        from monitoring.events import push_verdict
        from pipelines.lifecycle.retrain import evaluate_candidate

        verdict = evaluate_candidate(_request(params, run_id), registered)
        return {**verdict, "pushed": push_verdict(verdict, os.environ.get("VIOPS_PUSHGATEWAY"))}

    @task.branch
    def decide(verdict: dict, params=None, run_id=None) -> str:
        from pipelines.lifecycle.retrain import next_step

        return next_step(_request(params, run_id), verdict)

    @task
    def promote(verdict: dict, params=None, dag_run=None) -> dict:
        from monitoring.events import push_change
        from pipelines.lifecycle.retrain import promote_candidate

        trigger = {"dag_id": dag_run.dag_id, "run_id": dag_run.run_id, "reason": params["reason"],
                   "incident_id": params.get("incident_id") or None, "window": params.get("window") or None}
        request = _request(params, dag_run.run_id, trigger, actor=f"airflow:{dag_run.dag_id}/{dag_run.run_id}")
        change = promote_candidate(request, verdict)
        return {**change, "pushed": push_change(change, os.environ.get("VIOPS_PUSHGATEWAY"))}

    @task
    def deploy_live(verdict: dict, params=None, dag_run=None) -> dict:
        from pipelines.lifecycle.retrain import deploy_candidate

        request = _request(params, dag_run.run_id, actor=f"airflow:{dag_run.dag_id}/{dag_run.run_id}")
        return deploy_candidate(request, verdict)

    @task
    def reject(verdict: dict) -> dict:
        # The verdict is already on the version (viops.gate.* tags) and in the viops-evaluation experiment; the
        # champion is untouched. This task makes the rejection a visible, separate outcome of the run.
        return {"model": verdict["model"], "version": verdict["candidate_version"], "reasons": verdict["reasons"],
                "champion_version": verdict["champion_version"]}

    @task(trigger_rule="none_failed_min_one_success")
    def notify(params=None, ti=None) -> str:
        import logging

        promoted, rejected = ti.xcom_pull(task_ids="promote"), ti.xcom_pull(task_ids="reject")
        live = ti.xcom_pull(task_ids="deploy_live")
        if promoted:
            message = f"{promoted['message']} (reason: {params['reason']})"
        elif live:
            message = (f"version {live['version']} of {live['model']} passed the gate and is in {live['stage']}: "
                       f"vi_monitoring promotes it on live evidence (docs/deployment.md)")
        else:
            message = (f"version {rejected['version']} of {rejected['model']} was rejected by the gate; champion "
                       f"stays version {rejected['champion_version']}: " + "; ".join(rejected["reasons"]))
        logging.getLogger("viops.notify").warning("svi_retrain: %s", message)
        return message

    verdict = evaluate(register(train(prepare_data())))
    outcomes = [promote(verdict), deploy_live(verdict), reject(verdict)]
    decide(verdict) >> outcomes
    outcomes >> notify()


svi_retrain()
