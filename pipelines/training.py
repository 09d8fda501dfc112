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

from models.diagnostics import importance_diagnostics, regression_calibration
from models.laplace import laplace_approximation
from models.objectives import held_out_fit
from pipelines.build import build_family, build_model
from pipelines.config import TrainConfig, config_hash
from pipelines.data import PreparedData, prepare

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


def _tensors(frame, features, target, stats) -> tuple[torch.Tensor, torch.Tensor]:
    x = frame[list(features)].to_numpy(dtype=np.float32)
    y = frame[target].to_numpy(dtype=np.float32)
    if stats is not None:
        x = (x - stats["feature_mean"]) / stats["feature_scale"]
        y = (y - stats["target_mean"]) / stats["target_scale"]
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y))


def _standardization(data: PreparedData) -> dict | None:
    x = data.train[list(data.features)].to_numpy(dtype=np.float64)
    y = data.train[data.target].to_numpy(dtype=np.float64)
    scale = x.std(0)
    return {
        "feature_mean": x.mean(0).astype(np.float32),
        "feature_scale": np.where(scale > 0, scale, 1.0).astype(np.float32),
        "target_mean": float(y.mean()),
        "target_scale": float(y.std()) or 1.0,
    }


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
    uri = resolve_tracking_uri(tracking_uri)
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
        "viops.objective": "elbo",
        "viops.data_source": data.source,
        "mlflow.source.git.commit": commit,
        "git_commit": commit,
        **(tags or {}),
    }
    run = client.create_run(experiment_id, run_name=run_name or f"{config.name}-train", tags=tags)
    run_id = run.info.run_id
    try:
        result = _train_in_run(config, data, client, uri, run_id, experiment_id, register)
    except BaseException as exc:
        reason = str(exc) or type(exc).__name__
        client.set_tag(run_id, "viops.failure_reason", reason[:5000])
        client.set_terminated(run_id, status="FAILED" if not isinstance(exc, KeyboardInterrupt) else "KILLED")
        if isinstance(exc, TrainingFailed):
            exc.run_id = run_id
        raise
    client.set_terminated(run_id, status="FINISHED")
    return result


def _train_in_run(config, data, client, uri, run_id, experiment_id, register) -> TrainingResult:
    from pipelines.lightning_module import planned_steps
    from pipelines.telemetry import make_sink

    # Start the writer now: a writer process's start-up then overlaps the set-up below.
    sink = make_sink(uri, run_id, planned_steps=planned_steps(len(data.train), config.train),
                     enabled=config.train.log_step_metrics)
    workdir = Path(tempfile.mkdtemp(prefix="viops-train-"))  # checkpoints and artifacts before upload
    try:
        return _fit_and_log(config, data, client, uri, run_id, experiment_id, register, sink, workdir)
    finally:
        sink.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _fit_and_log(config, data, client, uri, run_id, experiment_id, register, sink, workdir: Path) -> TrainingResult:
    import mlflow
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import TQDMProgressBar
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
    resolved = config.model_dump(mode="json")
    client.log_batch(run_id, params=[mlflow.entities.Param(k, v[:6000]) for k, v in _flatten(resolved).items()])
    client.log_text(run_id, yaml.safe_dump(resolved, sort_keys=False), "config/resolved_config.yaml")
    _log_dataset_input(client, run_id, data)

    stats = _standardization(data) if config.data.standardize else None
    train_xy = _tensors(data.train, data.features, data.target, stats)
    val_xy = _tensors(data.validation, data.features, data.target, stats)
    pl.seed_everything(settings.seed, workers=True, verbose=False)
    model = build_model(config.model, len(data.features))
    family = build_family(config.guide, model.latent_dim)
    laplace = _precondition(client, run_id, model, family, train_xy) if config.guide.precondition == "laplace" else None
    module = SVIModule(model, family, settings, train_xy, val_xy if len(data.validation) else None)

    telemetry = StepTelemetry(sink, flush_every_n_steps=settings.log_every_n_steps)
    guard = NonFiniteGuard()
    averaging = IterateAveraging(settings.average_last)
    callbacks = [GradientNorms(), guard, telemetry, averaging]
    stopper = None
    if settings.early_stopping.enabled and len(data.validation):
        es = settings.early_stopping
        stopper = ConvergenceEarlyStopping(
            monitor="val_elbo", mode="max", patience=es.patience, min_delta=es.min_delta, scale_rtol=es.scale_rtol
        )
        callbacks.append(stopper)
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
        min_steps=int(module.planned_steps * (1.0 - settings.average_last / 2)),
        logger=logger,
        callbacks=callbacks,
        enable_progress_bar=show_progress,
        enable_model_summary=False,
        log_every_n_steps=1,
        check_val_every_n_epoch=None,
        val_check_interval=_validation_interval(module, settings),
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        default_root_dir=str(workdir),
    )
    started = time.perf_counter()
    with _tuned_for_training(sink):
        trainer.fit(module)
        sink.close()  # every step's metrics are delivered before the run can be registered
    seconds = time.perf_counter() - started
    if guard.failure_reason:
        raise TrainingFailed(guard.failure_reason)
    trainer.save_checkpoint(workdir / "checkpoints" / "last.ckpt")

    metrics = _final_metrics(module, data, stats, settings)
    importance = importance_diagnostics(module.model, module.family, *train_xy, num_samples=settings.khat_samples,
                                        seed=settings.seed)
    metrics.update({"psis_khat": importance.khat, "train_elbo": importance.elbo, "train_iwae": importance.iwae,
                    "approximation_gap": importance.approximation_gap})
    calibration = _calibration(module, data, stats, settings)
    if calibration is not None:
        metrics.update({f"coverage_{round(level * 100)}": value for level, value in calibration.coverage.items()})
        metrics["pit_ks"] = calibration.pit_ks
    if laplace is not None:  # q much narrower than the Laplace Gaussian: the signature of a too-simple family
        ratio = module.family.stddev.detach().cpu() / laplace.marginal_sd
        metrics.update({"sd_ratio_to_laplace_min": float(ratio.min()), "sd_ratio_to_laplace_max": float(ratio.max())})
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
    if calibration is not None:
        from pipelines.artifacts import plot_pit_histogram

        pit_png = plot_pit_histogram(calibration.pit.numpy(), workdir / "pit_histogram.png",
                                     f"{config.name}: PIT of held-out rows")
        client.log_artifact(run_id, str(pit_png), "diagnostics")
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
    client.log_metric(run_id, "laplace/log_joint_at_mode", laplace.log_joint)
    return laplace


def _calibration(module, data: PreparedData, stats, settings):
    """Coverage and PIT of the posterior predictive on the test split (else validation); None without held-out rows."""
    frame = data.test if len(data.test) else data.validation
    if not len(frame):
        return None
    x, y = _tensors(frame, data.features, data.target, stats)
    return regression_calibration(module.model.to("cpu"), module.family.to("cpu"), x, y,
                                  num_samples=settings.eval_particles * 4, seed=settings.seed)


def _final_metrics(module, data: PreparedData, stats, settings) -> dict[str, float]:
    """Validation and test ELBO per datum and predictive NLL of the final (averaged) posterior."""
    model, family = module.model.to("cpu"), module.family.to("cpu")
    n_train = len(data.train)
    out: dict[str, float] = {}
    torch.manual_seed(settings.seed + 1)
    for split in ("validation", "test"):
        frame = getattr(data, split)
        if not len(frame):
            continue
        x, y = _tensors(frame, data.features, data.target, stats)
        fit = held_out_fit(model, family, x, y, train_size=n_train, num_samples=settings.eval_particles)
        out[f"{split}_elbo_per_datum"] = float(fit.elbo_per_datum)
        out[f"{split}_predictive_nll"] = float(fit.predictive_nll)
    return out


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
