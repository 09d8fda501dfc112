"""One training run in MLflow: validated data -> a new run -> the SVI fit -> final metrics -> artifacts.

:func:`run_training` opens the run, tags it (data fingerprint, config hash, model kind, family, git commit), and
closes it FINISHED, or FAILED with the reason when anything raises. Bad config or data fail before a run exists.
Registration and the first champion are the lifecycle's (:func:`pipelines.lifecycle.train.train`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from pipelines.config.loading import config_hash
from pipelines.config.schema import TrainConfig
from pipelines.run_artifacts import DIAGNOSTICS_DIR, write_resolved_config
from pipelines.tracking import experiment_id as get_experiment_id
from pipelines.tracking import resolve_tracking_uri
from pipelines.training.artifacts import log_training_artifacts
from pipelines.training.data import PreparedData, check_trainable, count_classes, prepare
from pipelines.training.durability import (
    Heartbeat,
    Resumable,
    checkpoint_root,
    find_resumable,
    reap,
    run_checkpoint_dir,
)
from pipelines.training.final_metrics import final_metrics
from pipelines.training.fit import Fit, fit
from pipelines.training.multinode import await_run_id, node_rank
from pipelines.training.result import DDP_RUN_ID_ENV, TrainingFailed, TrainingResult
from pipelines.training.telemetry import SPOOL

__all__ = ["run_training"]

#: The checkpoint a resumed DDP run continues from, for the ranks Lightning's launcher starts.
RESUME_ENV = "VIOPS_RESUME_CHECKPOINT"


def run_training(
    config: TrainConfig,
    *,
    prepared: PreparedData | None = None,
    tracking_uri: str | None = None,
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
    resume: bool = False,
) -> TrainingResult:
    """Train ``config`` by minibatch SVI in a new MLflow run and log everything; registers nothing.

    Runs of the experiment whose process died (stale heartbeat) are marked FAILED first. With ``resume``, the newest
    unfinished run of the same config (and ``run_name``) that left a checkpoint is continued in its own MLflow run
    (:mod:`pipelines.training.durability`); without one, a new run starts.

    Raises:
        DataError: the data is missing or invalid, or changed since the run to resume (before any run is touched).
        RunStillAlive: the run to resume is still training in another process.
        TrainingFailed: training diverged (NaN/inf); the run is FAILED.
    """
    import mlflow
    from mlflow import MlflowClient

    data = prepared if prepared is not None else prepare(config.data)
    task = config.model.task
    num_classes = count_classes(data, getattr(config.model, "num_classes", None)) if task == "classification" else None
    check_trainable(data, config.model)
    uri = resolve_tracking_uri(tracking_uri)
    worker = _ddp_worker_rank()
    if not worker and config.train.num_nodes > 1 and node_rank() > 0:
        # Another node of a multi-node run: join the run node 0 created (pipelines/training/multinode.py).
        os.environ[DDP_RUN_ID_ENV] = await_run_id()
        worker = _ddp_worker_rank()
    if worker:
        # Lightning's DDP launcher re-ran this command for another device: join the run that rank 0 created.
        run_id = os.environ[DDP_RUN_ID_ENV]
        checkpoint = os.environ.get(RESUME_ENV)
        resume = Resumable(run_id, Path(checkpoint), 0) if checkpoint else None
        return _train_in_run(config, data, None, uri, run_id, "", num_classes, rank=worker, resume=resume)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment_id = get_experiment_id(client, config.experiment_name)
    commit = _git_commit()
    tags = {
        "viops.data_fingerprint": data.fingerprint,
        "viops.config_hash": config_hash(config),
        "viops.model_kind": config.model.kind,
        "viops.guide_family": config.guide.family,
        "viops.objective": config.objective.name,
        "viops.task": task,
        "viops.data_source": data.source,
        "mlflow.source.git.commit": commit,
        "git_commit": commit,
        **(tags or {}),
    }
    reap(client, [experiment_id], by=f"viops train ({run_name or config.name})")
    found = find_resumable(client, experiment_id, tags["viops.config_hash"], config.train.checkpoint_dir,
                           run_name) if resume else None
    if found is None:
        run_id = client.create_run(experiment_id, run_name=run_name or f"{config.name}-train", tags=tags).info.run_id
    else:
        run_id = _reopen(client, found, data.fingerprint)
    heartbeat = Heartbeat(client, run_id)
    try:
        result = _train_in_run(config, data, client, uri, run_id, experiment_id, num_classes, resume=found)
    except BaseException as exc:
        heartbeat.stop()
        reason = str(exc) or type(exc).__name__
        client.set_tag(run_id, "viops.failure_reason", reason[:5000])
        client.set_tag(run_id, "viops.artifacts_incomplete", "true")  # whatever was uploaded is not a whole model
        client.set_terminated(run_id, status="FAILED" if not isinstance(exc, KeyboardInterrupt) else "KILLED")
        if isinstance(exc, TrainingFailed):
            exc.run_id = run_id
        raise
    heartbeat.stop()
    client.set_terminated(run_id, status="FINISHED")
    shutil.rmtree(checkpoint_root(config.train.checkpoint_dir) / run_id, ignore_errors=True)
    return result


def _reopen(client, found: Resumable, fingerprint: str) -> str:
    """Set the run to resume RUNNING again, once its data is known to be the same; replay its telemetry spool."""
    from pipelines.tables import DataError
    from pipelines.training.telemetry import replay_spool

    run = client.get_run(found.run_id)
    trained_on = run.data.tags.get("viops.data_fingerprint")
    if trained_on != fingerprint:
        raise DataError(f"cannot resume run {found.run_id}: its data fingerprint is {trained_on}, the data now is "
                        f"{fingerprint}; train a new run instead (without --resume)")
    replay_spool(client, found.run_id, found.checkpoint.parent)
    client.update_run(found.run_id, status="RUNNING")
    client.set_tag(found.run_id, "viops.resumed_from_step", str(found.step))
    client.set_tag(found.run_id, "viops.failure_reason", "")
    return found.run_id


def _ddp_worker_rank() -> int:
    """This process's rank when it is a DDP worker launched by rank 0 of a viops run, else 0."""
    if DDP_RUN_ID_ENV not in os.environ:
        return 0
    return int(os.environ.get("LOCAL_RANK", "0")) + int(os.environ.get("NODE_RANK", "0")) * 1_000_000


def _train_in_run(config: TrainConfig, data: PreparedData, client, uri: str, run_id: str, experiment_id: str,
                  num_classes: int | None, rank: int = 0, resume: Resumable | None = None) -> TrainingResult:
    from pipelines.training.loaders import planned_steps
    from pipelines.training.telemetry import make_sink

    checkpoints = run_checkpoint_dir(config.train.checkpoint_dir, run_id)
    if resume is not None and rank == 0 and config.train.world_size > 1:
        os.environ[RESUME_ENV] = str(resume.checkpoint)  # the DDP ranks Lightning launches resume from it too
    # Start the writer now: a writer process's start-up then overlaps the set-up below.
    steps = planned_steps(data.train_rows, config.train, config.train.world_size)
    sink = make_sink(uri, run_id, planned_rows=steps // config.train.metrics_every_n_steps,
                     enabled=config.train.log_step_metrics and rank == 0, spool=checkpoints / SPOOL)
    workdir = Path(tempfile.mkdtemp(prefix="viops-train-"))  # artifacts before upload
    try:
        if rank == 0 and resume is None:
            _log_inputs(client, run_id, config, data)
        done = fit(config, data, client, uri, run_id, sink, workdir, num_classes, rank, checkpoints=checkpoints,
                   resume_from=resume.checkpoint if resume else None)
        if done.trainer.global_rank != 0:
            return TrainingResult(run_id, experiment_id, uri, config.model_name, None, (), {}, data.fingerprint,
                                  registration=f"DDP rank {done.trainer.global_rank}: rank 0 logs and registers",
                                  rank=rank)
        metrics, calibration_plot = final_metrics(config, data, done, workdir)
        done.deliver_telemetry(sink)
        stopped = _log_outputs(client, run_id, config, data, done, metrics, calibration_plot, workdir)
    finally:
        sink.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return TrainingResult(run_id=run_id, experiment_id=experiment_id, tracking_uri=uri, model_name=config.model_name,
                          model_version=None, aliases=(), metrics=metrics, data_fingerprint=data.fingerprint,
                          stopped_reason=stopped, registration="registration disabled",
                          resumed_from_step=resume.step if resume else None)


def _log_inputs(client, run_id: str, config: TrainConfig, data: PreparedData) -> None:
    """The resolved config (as params and as ``config/resolved_config.yaml``) and the training split as input."""
    import mlflow

    resolved = config.model_dump(mode="json")
    client.log_batch(run_id, params=[mlflow.entities.Param(k, v[:6000]) for k, v in _flatten(resolved).items()])
    write_resolved_config(client, run_id, config)
    _log_dataset_input(client, run_id, data)


def _log_outputs(client, run_id: str, config: TrainConfig, data: PreparedData, done: Fit, metrics: dict[str, float],
                 calibration_plot: Path | None, workdir: Path) -> str:
    """``final/*`` metrics, the stopping reason, every artifact and the pyfunc model; returns why training stopped
    early ("" when it ran to ``max_epochs``)."""
    import mlflow

    step = done.trainer.global_step
    client.log_batch(run_id, metrics=[mlflow.entities.Metric(f"final/{k}", v, int(time.time() * 1000), step)
                                      for k, v in metrics.items()])
    stopper = done.stopper
    stopped = stopper.stopping_reason_message if stopper is not None and stopper.stopping_reason.value else ""
    client.set_tag(run_id, "viops.stopped_reason", stopped or f"reached max_epochs={config.train.max_epochs}")
    log_training_artifacts(client, run_id, config, data, done.model, done.family, done.stats,
                           done.telemetry.elbo_history, workdir)
    if calibration_plot is not None:
        client.log_artifact(run_id, str(calibration_plot), DIAGNOSTICS_DIR)
    if done.gaps is not None and done.gaps.history:
        from pipelines.training.plots import plot_amortization_gaps

        plot = plot_amortization_gaps(done.gaps.history, workdir / "amortization_gaps.png",
                                      f"{config.name}: inference gaps")
        client.log_artifact(run_id, str(plot), DIAGNOSTICS_DIR)
    return stopped


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def _flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)
    return flat


def _log_dataset_input(client, run_id: str, data: PreparedData) -> None:
    """Record the training split as the run's input dataset (schema from the validated dtypes: no inference pass)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.types import ColSpec, Schema

    columns = [*data.features, data.target]
    schema = Schema([ColSpec("double", name) for name in columns])
    rows = data.train_rows
    source_type = "code" if data.source.startswith("sklearn:") else "local"
    dataset = Dataset(
        name=f"train-{data.fingerprint}",
        digest=data.fingerprint,
        source_type=source_type,
        source=json.dumps({"uri": data.source}),
        schema=json.dumps({"mlflow_colspec": schema.to_dict()}),
        profile=json.dumps({"num_rows": rows, "num_elements": rows * len(columns)}),
    )
    tag = InputTag(key="mlflow.data.context", value="training")
    client.log_inputs(run_id, datasets=[DatasetInput(dataset, tags=[tag])])
