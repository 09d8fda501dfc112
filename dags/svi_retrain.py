"""svi_retrain: prepare data -> train (the viops CLI in a subprocess) -> register the new version.

Runs weekly, or on demand with a ``conf`` such as ``{"reason": "drift on window 2026-11-23T10"}``; the reason is
tagged on the MLflow run. Each task is a few lines of wiring over ``pipelines/``; prepared data is keyed by the Airflow
run id, and registration is idempotent per MLflow run, so retries never create a second version.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import Param, dag, task

DEFAULT_CONFIG = os.environ.get(
    "VIOPS_RETRAIN_CONFIG", str(Path(__file__).resolve().parent.parent / "configs" / "demo" / "blr_diabetes.yaml")
)


def _overrides(params) -> list[str]:
    return [arg for item in params.get("overrides") or [] for arg in ("--set", item)]


@dag(
    dag_id="svi_retrain",
    schedule="@weekly",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30), "retry_exponential_backoff": True},
    params={
        "reason": Param("scheduled weekly retrain", type="string", description="why this retrain runs"),
        "config": Param(DEFAULT_CONFIG, type="string", description="viops training config (YAML)"),
        "overrides": Param([], type="array", description="dotted.key=value config overrides"),
    },
    tags=["viops", "training"],
    doc_md=__doc__,
)
def svi_retrain():
    @task
    def prepare_data(params=None, run_id=None) -> dict:
        from pipelines.invoke import run_viops, safe_key, work_dir

        out = work_dir() / "svi_retrain" / safe_key(run_id) / "prepared"
        return run_viops(["prepare", "--config", params["config"], "--out", str(out), *_overrides(params)])

    @task
    def train(prepared: dict, params=None, run_id=None) -> dict:
        from pipelines.invoke import run_viops

        return run_viops([
            "train", "--config", params["config"], "--prepared", prepared["directory"], "--no-register",
            "--reason", params["reason"], "--run-name", f"svi_retrain/{run_id}", *_overrides(params),
        ])

    @task
    def register(trained: dict) -> dict:
        from pipelines.invoke import run_viops

        return run_viops([
            "register", "--run-id", trained["run_id"], "--model", trained["model_name"],
            "--tracking-uri", trained["tracking_uri"],
        ])

    register(train(prepare_data()))


svi_retrain()
