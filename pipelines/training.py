"""One training run: data → SVI with Lightning → telemetry and artifacts in MLflow → registry.

:func:`train` is what ``viops train`` calls. Bad config or data fail before an MLflow run exists; a run that fails
later (a NaN guard, an exception) is marked FAILED and nothing is registered.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from models.diagnostics import importance_diagnostics
from models.laplace import laplace_approximation
from pipelines.build import build_family, build_model
from pipelines.config import TrainConfig, config_hash
from pipelines.data import PreparedData, check_counts, count_classes, prepare
from pipelines.evaluation import calibration_metrics, held_out_metrics, split_tensors, standardization

__all__ = ["TrainingResult", "TrainingFailed", "train", "resolve_tracking_uri", "DEFAULT_TRACKING_URI"]

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


class TrainingFailed(RuntimeError):
    """Training ran but did not produce a usable posterior; the MLflow run is marked FAILED."""

    def __init__(self, message: str, run_id: str | None = None):
        super().__init__(message)
        self.run_id = run_id


@dataclass(frozen=True)
class TrainingResult:
    """What a successful training run produced (the ``--json`` output of ``viops train``).

    Attributes:
        run_id, experiment_id, tracking_uri: where the run lives in MLflow.
        model_name: the registered model name.
        model_version: the registered version, or None when registration was off.
        aliases: registry aliases now on that version.
        metrics: final metrics (validation ELBO per datum, predictive NLL, steps, seconds, ...).
        data_fingerprint: content hash of the training data.
    """

    run_id: str
    experiment_id: str
    tracking_uri: str
    model_name: str
    model_version: str | None
    aliases: tuple[str, ...]
    metrics: dict[str, float]
    data_fingerprint: str
    stopped_reason: str = ""
    registration: str = ""
    #: The DDP rank that returned this (workers > 0 train but log nothing; rank 0 logs, evaluates and registers).
    rank: int = 0

    def to_json(self) -> dict:
        return {
            "run_id": self.run_id,
            "experiment_id": self.experiment_id,
            "tracking_uri": self.tracking_uri,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "aliases": list(self.aliases),
            "metrics": self.metrics,
            "data_fingerprint": self.data_fingerprint,
            "stopped_reason": self.stopped_reason,
            "registration": self.registration,
        }


def resolve_tracking_uri(explicit: str | None = None) -> str:
    """The tracking URI: explicit argument, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` here."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


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


def train(
    config: TrainConfig,
    *,
    prepared: PreparedData | None = None,
    tracking_uri: str | None = None,
    register: bool | None = None,
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
) -> TrainingResult:
    """Train ``config`` by minibatch SVI, log everything to MLflow, and register the model.

    Raises:
        DataError: the data is missing or invalid (before any MLflow run is created).
        TrainingFailed: training diverged (NaN/inf); the run is FAILED and nothing is registered.
    """
    import mlflow
    from mlflow import MlflowClient

    data = prepared if prepared is not None else prepare(config.data)
    task = config.model.task
    num_classes = count_classes(data, getattr(config.model, "num_classes", None)) if task == "classification" else None
    if config.model.kind == "vae":
        check_counts(data, config.model.total_count if config.model.likelihood == "binomial" else 1)
    uri = resolve_tracking_uri(tracking_uri)
    worker = _ddp_worker_rank()
    if worker:
        # Lightning's DDP launcher re-ran this command for another device: join the run that rank 0 created.
        run_id = os.environ[DDP_RUN_ID_ENV]
        return _train_in_run(config, data, None, uri, run_id, "", False, num_classes, rank=worker)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name(config.experiment_name)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(config.experiment_name)
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
    run = client.create_run(experiment_id, run_name=run_name or f"{config.name}-train", tags=tags)
    run_id = run.info.run_id
    try:
        result = _train_in_run(config, data, client, uri, run_id, experiment_id, register, num_classes)
    except BaseException as exc:
        reason = str(exc) or type(exc).__name__
        client.set_tag(run_id, "viops.failure_reason", reason[:5000])
        client.set_terminated(run_id, status="FAILED" if not isinstance(exc, KeyboardInterrupt) else "KILLED")
        if isinstance(exc, TrainingFailed):
            exc.run_id = run_id
        raise
    client.set_terminated(run_id, status="FINISHED")
    if result.model_version is not None and config.registry.promote_first:
        result = _first_champion(client, config, result)
    return result


def _first_champion(client, config: TrainConfig, result: TrainingResult) -> TrainingResult:
    """A model without a champion: its first version becomes champion if it passes the gate's absolute thresholds."""
    import dataclasses

    from pipelines.audit import default_actor
    from pipelines.gate import evaluate
    from pipelines.registry import CHAMPION, alias_version, promote

    if alias_version(client, config.model_name, CHAMPION) is not None:
        return result
    verdict = evaluate(client, config.model_name, tracking_uri=result.tracking_uri,
                       candidate=str(result.model_version), gate=config.gate)
    if not verdict.passed:
        note = f"{result.registration}; not promoted: the gate rejected it ({'; '.join(verdict.reasons)})"
        return dataclasses.replace(result, registration=note)
    change = promote(client, config.model_name, str(result.model_version), actor=default_actor(),
                     reason="first model: no champion; passed the gate's absolute thresholds",
                     trigger={"run_id": result.run_id})
    version = client.get_model_version(config.model_name, str(result.model_version))
    return dataclasses.replace(result, aliases=tuple(sorted(version.aliases)),
                               registration=f"{result.registration}; {change.message}")


#: Set by rank 0 before a DDP fit, read by the processes Lightning launches for the other devices.
DDP_RUN_ID_ENV = "VIOPS_DDP_RUN_ID"


def _ddp_worker_rank() -> int:
    """This process's rank when it is a DDP worker launched by rank 0 of a viops run, else 0."""
    if DDP_RUN_ID_ENV not in os.environ:
        return 0
    return int(os.environ.get("LOCAL_RANK", "0")) + int(os.environ.get("NODE_RANK", "0")) * 1_000_000


def _train_in_run(config, data, client, uri, run_id, experiment_id, register, num_classes, rank: int = 0
                  ) -> TrainingResult:
    from pipelines.lightning_module import planned_steps
    from pipelines.telemetry import make_sink

    # Start the writer now: a writer process's start-up then overlaps the set-up below.
    sink = make_sink(uri, run_id, planned_steps=planned_steps(len(data.train), config.train, config.train.world_size),
                     enabled=config.train.log_step_metrics and rank == 0)
    workdir = Path(tempfile.mkdtemp(prefix="viops-train-"))  # checkpoints and artifacts before upload
    try:
        return _fit_and_log(config, data, client, uri, run_id, experiment_id, register, sink, workdir, num_classes,
                            rank)
    finally:
        sink.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _fit_and_log(config, data, client, uri, run_id, experiment_id, register, sink, workdir: Path,
                 num_classes: int | None, rank: int = 0) -> TrainingResult:
    import mlflow
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import EarlyStopping, TQDMProgressBar
    from pytorch_lightning.loggers import MLFlowLogger

    from pipelines.callbacks import (
        ConvergenceEarlyStopping,
        GradientNorms,
        IterateAveraging,
        LastCheckpoint,
        NonFiniteGuard,
        StepTelemetry,
    )
    from pipelines.lightning_module import SVIModule
    from pipelines.registry import register_run

    settings = config.train
    if rank == 0:
        resolved = config.model_dump(mode="json")
        client.log_batch(run_id, params=[mlflow.entities.Param(k, v[:6000]) for k, v in _flatten(resolved).items()])
        client.log_text(run_id, yaml.safe_dump(resolved, sort_keys=False), "config/resolved_config.yaml")
        _log_dataset_input(client, run_id, data)

    classify = num_classes is not None
    amortized = config.model.kind == "vae"
    stats = standardization(data, classify=classify) if config.data.standardize else None
    train_xy = split_tensors(data.train, data.features, data.target, stats, classify=classify)
    val_xy = split_tensors(data.validation, data.features, data.target, stats, classify=classify)
    pl.seed_everything(settings.seed, workers=True, verbose=False)
    model = build_model(config.model, len(data.features), num_classes)
    family = laplace = None
    if amortized:
        from pipelines.amortized import AmortizedSVIModule

        module = AmortizedSVIModule(model, config.objective, settings, train_xy,
                                    val_xy if len(data.validation) else None,
                                    active_unit_threshold=config.amortization.active_unit_threshold)
    else:
        family = build_family(config.guide, model.latent_dim, init_loc=model.initial_loc())
        if config.guide.precondition == "laplace":
            laplace = _precondition(client if rank == 0 else None, run_id, model, family, train_xy)
        module = SVIModule(model, family, settings, train_xy, val_xy if len(data.validation) else None)

    telemetry = StepTelemetry(sink, flush_every_n_steps=settings.log_every_n_steps)
    guard = NonFiniteGuard()
    callbacks = [GradientNorms(), guard, telemetry]
    if not amortized:
        callbacks.append(IterateAveraging(settings.average_last))
    stopper = gaps = None
    if settings.early_stopping.enabled and len(data.validation):
        es = settings.early_stopping
        if amortized:  # no variational scales to wait for: the encoder's output is per row
            stopper = EarlyStopping(monitor="val_elbo", mode="max", patience=es.patience, min_delta=es.min_delta)
        else:
            stopper = ConvergenceEarlyStopping(
                monitor="val_elbo", mode="max", patience=es.patience, min_delta=es.min_delta, scale_rtol=es.scale_rtol
            )
        callbacks.append(stopper)
    if amortized and len(data.validation):
        from pipelines.amortized import AmortizationDiagnostics

        gaps = AmortizationDiagnostics(val_xy[0][: config.amortization.subsample], config.amortization,
                                       every_n_validations=config.amortization.every_n_validations, seed=settings.seed)
        callbacks.append(gaps)
    batches_per_epoch = -(-module.steps_per_epoch // settings.steps_per_batch)
    show_progress = settings.progress_bar and sys.stderr.isatty()
    if show_progress:
        callbacks.append(TQDMProgressBar(refresh_rate=max(1, batches_per_epoch // 4)))
    checkpoint = LastCheckpoint(workdir / "checkpoints", every_seconds=settings.checkpoint_every_seconds)
    callbacks.append(checkpoint)
    logger = MLFlowLogger(experiment_name=config.experiment_name, tracking_uri=uri, run_id=run_id)
    trainer = pl.Trainer(
        accelerator=settings.accelerator,
        devices=settings.devices,
        max_epochs=settings.max_epochs,
        # Early stopping may only cut the second half of the averaging window: before that the step size is still
        # too large for the iterates to have settled, however flat the validation ELBO looks.
        min_steps=0 if amortized else int(module.planned_steps * (1.0 - settings.average_last / 2)),
        logger=logger,
        callbacks=callbacks,
        enable_progress_bar=show_progress,
        enable_model_summary=False,
        log_every_n_steps=1,
        check_val_every_n_epoch=None,
        val_check_interval=_validation_interval(module, settings),
        strategy=settings.strategy,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        default_root_dir=str(workdir),
    )
    if settings.world_size > 1 and rank == 0:
        os.environ[DDP_RUN_ID_ENV] = run_id  # the launched ranks join this run (see train)
        client.set_tag(run_id, "viops.world_size", str(settings.world_size))
    started = time.perf_counter()
    with _tuned_for_training(sink):
        trainer.fit(module)
        sink.close()  # every step's metrics are delivered before the run can be registered
    seconds = time.perf_counter() - started
    if guard.failure_reason:
        raise TrainingFailed(guard.failure_reason)
    trainer.save_checkpoint(workdir / "checkpoints" / "last.ckpt")
    if trainer.global_rank != 0:
        return TrainingResult(run_id, experiment_id, uri, config.model_name, None, (), {}, data.fingerprint,
                              registration=f"DDP rank {trainer.global_rank}: rank 0 logs and registers", rank=rank)

    if amortized:
        from pipelines.amortized import amortized_final_metrics

        splits = {"validation": val_xy[0], "test": split_tensors(data.test, data.features, data.target, stats)[0]}
        metrics = amortized_final_metrics(model, splits, train_xy[0], settings, config.amortization)
        calibration_plot = None
        if gaps is not None:
            metrics["amortization_time_fraction"] = gaps.seconds / seconds if seconds > 0 else 0.0
    else:
        metrics = held_out_metrics(module.model, module.family, data, stats, settings)
        importance = importance_diagnostics(module.model, module.family, *train_xy,
                                            num_samples=settings.khat_samples, seed=settings.seed)
        metrics.update({"psis_khat": importance.khat, "train_elbo": importance.elbo, "train_iwae": importance.iwae,
                        "approximation_gap": importance.approximation_gap})
        calibration, calibration_plot = calibration_metrics(module.model, module.family, data, stats, settings,
                                                            workdir, config.name)
        metrics.update(calibration)
        if laplace is not None:  # q much narrower than the Laplace Gaussian: the signature of a too-simple family
            ratio = module.family.stddev.detach().cpu() / laplace.marginal_sd
            metrics.update({"sd_ratio_to_laplace_min": float(ratio.min()),
                            "sd_ratio_to_laplace_max": float(ratio.max())})
    metrics.update(
        {"train_seconds": seconds, "steps": float(trainer.global_step), "epochs": float(trainer.current_epoch)}
    )
    metrics["steps_per_second"] = metrics["steps"] / seconds if seconds > 0 else 0.0
    if not all(np.isfinite(v) for v in metrics.values()):
        raise TrainingFailed(f"final metrics are not finite: {metrics}")
    client.log_batch(
        run_id,
        metrics=[mlflow.entities.Metric(f"final/{k}", v, int(time.time() * 1000), trainer.global_step)
                 for k, v in metrics.items()],
    )
    stopped = stopper.stopping_reason_message if stopper is not None and stopper.stopped_epoch else ""
    client.set_tag(run_id, "viops.stopped_reason", stopped or f"reached max_epochs={settings.max_epochs}")

    from pipelines.artifacts import log_training_artifacts

    log_training_artifacts(
        client, run_id, config, data, model, family, stats, telemetry.elbo_history, workdir
    )
    if calibration_plot is not None:
        client.log_artifact(run_id, str(calibration_plot), "diagnostics")
    if gaps is not None and gaps.history:
        from pipelines.artifacts import plot_amortization_gaps

        client.log_artifact(run_id, str(plot_amortization_gaps(gaps.history, workdir / "amortization_gaps.png",
                                                               f"{config.name}: inference gaps")), "diagnostics")
    model_version, aliases, registration = None, (), "registration disabled"
    if config.registry.auto_register if register is None else register:
        reg = register_run(
            client,
            run_id,
            config.model_name,
            tags={"viops.data_fingerprint": data.fingerprint, "viops.config_hash": config_hash(config)},
        )
        model_version, aliases, registration = reg.version, reg.aliases, reg.reason
    return TrainingResult(
        run_id=run_id,
        experiment_id=experiment_id,
        tracking_uri=uri,
        model_name=config.model_name,
        model_version=model_version,
        aliases=tuple(aliases),
        metrics=metrics,
        data_fingerprint=data.fingerprint,
        stopped_reason=stopped or "",
        registration=registration,
    )


#: Validate at least this many times per run, however short, so that every run has a validation curve.
MIN_VALIDATIONS_PER_RUN = 20


def _validation_interval(module, settings) -> int:
    """Lightning batches between validations: every ``val_every_n_steps`` steps, or more often for short runs."""
    steps = max(1, min(settings.val_every_n_steps, module.planned_steps // MIN_VALIDATIONS_PER_RUN))
    steps_per_batch = min(settings.steps_per_batch, module.steps_per_epoch)
    return max(1, round(steps / steps_per_batch))


@contextlib.contextmanager
def _tuned_for_training(sink):
    """Process settings for the fit: leave a core to a telemetry writer process, and freeze the GC's old heap."""
    from pipelines.telemetry import MlflowMetricSink

    threads = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if isinstance(sink, MlflowMetricSink) and cores > 1 and threads >= cores:
        torch.set_num_threads(cores - 1)
    # The training loop allocates many short-lived objects; full collections would rescan the large heap of imported
    # libraries each time. Freeze that heap for the duration of the fit (and give it back afterwards).
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
        torch.set_num_threads(threads)


def _precondition(client, run_id: str, model, family, train_xy):
    """Centre the family at the posterior mode, in units of the Laplace marginal SDs (``guide.precondition``)."""
    try:
        laplace = laplace_approximation(model, *train_xy)
    except ValueError as exc:
        raise TrainingFailed(f"guide.precondition=laplace: {exc}") from exc
    family.precondition(laplace.mode, laplace.marginal_sd, laplace.scale_tril)
    if client is not None:
        client.log_metric(run_id, "laplace/log_joint_at_mode", laplace.log_joint)
    return laplace


def _log_dataset_input(client, run_id: str, data: PreparedData) -> None:
    """Record the training split as the run's input dataset (schema from the validated dtypes: no inference pass)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.types import ColSpec, Schema

    columns = [*data.features, data.target]
    schema = Schema([ColSpec("double", name) for name in columns])
    rows = len(data.train)
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
