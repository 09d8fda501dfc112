"""The SVI fit of one run: model, variational family and Lightning module from the config, callbacks, the Trainer.

:func:`fit` is the middle of a training run (:mod:`pipelines.training.run` opens and closes the MLflow run around
it, and :mod:`pipelines.training.final_metrics` measures what it produced).
"""

from __future__ import annotations

import contextlib
import gc
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from models.laplace import laplace_approximation
from pipelines.build import build_family, build_model
from pipelines.config.schema import TrainConfig
from pipelines.run_artifacts import CHECKPOINTS_DIR
from pipelines.training.data import PreparedData
from pipelines.training.evaluation import seeded_rows, split_tensors, standardization
from pipelines.training.multinode import publish_run_id
from pipelines.training.result import DDP_RUN_ID_ENV, TrainingFailed

__all__ = ["Fit", "fit"]


@dataclass
class Fit:
    """What a finished fit leaves for the final metrics and artifacts.

    Attributes:
        trainer, module: the Lightning objects (``trainer.global_step``, ``module.model``/``module.family``).
        model, family: the model and its variational family (``family`` is None for an amortized model).
        laplace: the Laplace approximation the family was started from (``guide.precondition: laplace``) or, for a
            generalised linear model, the one its posterior is compared with (``final/sd_ratio_to_laplace_*``);
            None otherwise.
        stats: the standardisation of the training split, or None.
        train_xy, val_xy: the tensors trained and validated on.
        telemetry, stopper, gaps: the step-telemetry, early-stopping and amortization-gap callbacks (or None).
        validation_time: the callback that times the validation checks (``seconds``).
        on_exception: the callback that keeps a fit that raised (its ``ckpt_path``).
        seconds: wall time of ``trainer.fit``. The step metrics still held when it ends are on their way to the
            tracking store; :meth:`deliver_telemetry` waits for them.
    """

    trainer: object
    module: object
    model: object
    family: object
    laplace: object
    stats: dict | None
    train_xy: tuple
    val_xy: tuple
    telemetry: object
    stopper: object
    gaps: object
    validation_time: object
    on_exception: object
    seconds: float

    def deliver_telemetry(self, sink) -> None:
        """Wait until every step's metrics are delivered (before the run's outputs are logged and it can be
        registered). When they cannot be, the command fails, and the finished fit is kept where Lightning keeps a fit
        that raised (``on_exception.ckpt``): a ``--resume`` goes on from it instead of from the last time-based
        checkpoint. Under DDP only rank 0 has a sink, and a checkpoint needs every rank, so there the last time-based
        checkpoint stands."""
        from pipelines.training.telemetry import TelemetryError

        try:
            sink.close()
        except TelemetryError:
            if self.trainer.world_size == 1:
                self.trainer.save_checkpoint(self.on_exception.ckpt_path)
            raise


def fit(config: TrainConfig, data: PreparedData, client, uri: str, run_id: str, sink, workdir: Path,
        num_classes: int | None, rank: int = 0, checkpoints: Path | None = None,
        resume_from: Path | None = None) -> Fit:
    """Build the model, family and Lightning module of ``config`` and run SVI on ``data``, writing ``last.ckpt``
    (and ``on_exception.ckpt``) to ``checkpoints``; with ``resume_from``, continue from that checkpoint.

    Raises:
        TrainingFailed: the NaN/inf guard stopped the fit.
    """
    import pytorch_lightning as pl

    from pipelines.training.metrics_logger import fit_logger

    settings = config.train
    classify = num_classes is not None
    amortized = config.model.kind == "vae"
    stats = standardization(data, classify=classify) if config.data.standardize else None
    train_xy = split_tensors(data.train, data.features, data.target, stats, classify=classify)
    val_xy = split_tensors(data.validation, data.features, data.target, stats, classify=classify)
    pl.seed_everything(settings.seed, workers=True, verbose=False)
    model = build_model(config.model, len(data.features), num_classes)
    family = laplace = None
    # The checks during training see a fixed sample of a large split: at 64 draws a check over 150,000 rows would
    # cost more than the steps between checks. The final metrics use the whole split (final_metrics).
    validation = seeded_rows(val_xy, settings.val_rows, settings.seed + 2) if len(data.validation) else None
    stream = _streamed_batches(data, config, stats, classify)
    if amortized:
        from pipelines.training.amortized_module import AmortizedSVIModule

        module = AmortizedSVIModule(model, config.objective, settings, train_xy, validation,
                                    active_unit_threshold=config.amortization.active_unit_threshold,
                                    train_stream=stream)
    else:
        from pipelines.training.svi_module import SVIModule

        family = build_family(config.guide, model.latent_dim, init_loc=model.initial_loc())
        glm = config.model.kind in LAPLACE_REFERENCE_KINDS
        if config.guide.precondition == "laplace":
            laplace = _precondition(client if rank == 0 else None, run_id, model, family, train_xy)
        elif glm and stream is None:  # a streamed source has no Hessian over every row (config checks laplace)
            laplace = _reference_laplace(model, train_xy)
            if laplace is not None and config.guide.precondition == "auto":
                family.precondition(laplace.mode, laplace.marginal_sd, laplace.scale_tril)
        module = SVIModule(model, family, settings, train_xy, validation, train_stream=stream)
    callbacks = _Callbacks(config, module, sink, validation, checkpoints or workdir / CHECKPOINTS_DIR)
    trainer = pl.Trainer(
        accelerator=settings.accelerator,
        devices=settings.devices,
        num_nodes=settings.num_nodes,
        max_epochs=settings.max_epochs // module.passes_per_epoch,  # each Lightning epoch: that many passes
        # Early stopping may only cut the second half of the averaging window: before that the step size is still
        # too large for the iterates to have settled, however flat the validation ELBO looks.
        min_steps=0 if amortized else int(module.planned_steps * (1.0 - settings.average_last / 2)),
        logger=fit_logger(sink, config.experiment_name, uri, run_id),
        callbacks=callbacks.all,
        enable_progress_bar=False,  # TrainingProgress reports instead: steps, ELBO, rate, ETA; plain lines in logs
        enable_model_summary=False,
        log_every_n_steps=1,
        check_val_every_n_epoch=None,
        val_check_interval=_plan_batches(module, settings, stream),
        strategy=settings.strategy,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        default_root_dir=str(workdir),
    )
    rendezvous = None
    if settings.world_size > 1 and rank == 0:
        os.environ[DDP_RUN_ID_ENV] = run_id  # the launched ranks join this run (see train)
        client.set_tag(run_id, "viops.world_size", str(settings.world_size))
        if settings.num_nodes > 1:  # the other nodes' ranks learn the run id from it; kept until the fit ends
            rendezvous = publish_run_id(run_id)
            client.set_tag(run_id, "viops.num_nodes", str(settings.num_nodes))
    started = time.perf_counter()
    with _tuned_for_training(sink):
        trainer.fit(module, ckpt_path=str(resume_from) if resume_from else None)
    # The last steps' metrics go out now and are delivered while the final metrics are computed (run.py waits for
    # them before it logs the outputs): on a short run, waiting here took a tenth of the fit.
    sink.send_held()
    seconds = time.perf_counter() - started
    del rendezvous  # every node has joined the run
    if callbacks.guard.failure_reason:
        raise TrainingFailed(callbacks.guard.failure_reason)
    trainer.save_checkpoint(workdir / CHECKPOINTS_DIR / "last.ckpt")
    return Fit(trainer, module, model, family, laplace, stats, train_xy, val_xy, callbacks.telemetry,
               callbacks.stopper, callbacks.gaps, callbacks.validation_time, callbacks.on_exception, seconds)


def _streamed_batches(data: PreparedData, config: TrainConfig, stats, classify: bool):
    """The training minibatches of a streamed source (``data.streaming``), or None for an in-memory one."""
    if data.stream is None:
        return None
    from pipelines.training.stream_batches import StreamedBatches

    settings = config.train
    return StreamedBatches(data.stream, settings.batch_size, buffer_rows=config.data.streaming.shuffle_buffer_rows,
                           seed=settings.seed, stats=stats, classify=classify, group=settings.steps_per_batch)


class _Callbacks:
    """The callbacks of one fit: gradient norms, the NaN/inf guard, step telemetry, the validation checks' clock,
    iterate averaging (global latents), early stopping, the amortization gaps (amortized models), progress (a bar on
    a terminal), checkpoints (every ``checkpoint_every_seconds``, and when training raises)."""

    def __init__(self, config: TrainConfig, module, sink, validation, checkpoints: Path):
        from pytorch_lightning.callbacks import EarlyStopping, OnExceptionCheckpoint

        from pipelines.training.averaging import IterateAveraging
        from pipelines.training.callbacks import (
            ConvergenceEarlyStopping,
            GradientNorms,
            LastCheckpoint,
            NonFiniteGuard,
            StepTelemetry,
            ValidationTime,
        )
        from pipelines.training.progress import TrainingProgress

        settings, amortized = config.train, config.model.kind == "vae"
        self.telemetry = StepTelemetry(sink, flush_every_n_steps=settings.log_every_n_steps,
                                       every_n_steps=settings.metrics_every_n_steps)
        self.guard = NonFiniteGuard()
        self.validation_time = ValidationTime()
        self.all = [GradientNorms(), self.guard, self.telemetry, self.validation_time]
        if not amortized:
            self.all.append(IterateAveraging(settings.average_last))
        self.stopper = self.gaps = None
        if settings.early_stopping.enabled and validation is not None:
            es = settings.early_stopping
            if amortized:  # no variational scales to wait for: the encoder's output is per row
                self.stopper = EarlyStopping(monitor="val_elbo", mode="max", patience=es.patience,
                                             min_delta=es.min_delta)
            else:
                self.stopper = ConvergenceEarlyStopping(monitor="val_elbo", mode="max", patience=es.patience,
                                                        min_delta=es.min_delta, scale_rtol=es.scale_rtol)
            self.all.append(self.stopper)
        if amortized and validation is not None:
            from pipelines.diagnostics.amortization import AmortizationDiagnostics

            amortization = config.amortization
            self.gaps = AmortizationDiagnostics(validation[0][: amortization.subsample], amortization,
                                                every_n_validations=amortization.every_n_validations,
                                                seed=settings.seed)
            self.all.append(self.gaps)
        if settings.progress_bar:
            self.all.append(TrainingProgress(module.planned_steps, module.dataset_size,
                                             every_seconds=settings.status_every_seconds))
        self.all.append(LastCheckpoint(checkpoints, every_seconds=settings.checkpoint_every_seconds))
        self.on_exception = OnExceptionCheckpoint(checkpoints)
        self.all.append(self.on_exception)


#: Validate at least this many times per run, however short, so that every run has a validation curve.
MIN_VALIDATIONS_PER_RUN = 20


def _plan_batches(module, settings, stream) -> int:
    """Set the SVI steps of each Lightning batch (``module.steps_per_batch``, and the stream's); return the Lightning
    batches between validations: every ``val_every_n_steps`` steps, or often enough for 20 validations in a short run.

    A Lightning batch takes up to ``train.steps_per_batch`` steps, and no more than a validation interval: the
    largest number that divides a Lightning epoch's steps, so that every batch of an epoch is whole and a run resumed
    mid-epoch (whose epoch goes on for the batches it had left) takes exactly its planned steps. Where no divisor
    comes near the limit (an epoch of a prime number of steps), batches take the limit and an epoch ends short."""
    interval = max(1, min(settings.val_every_n_steps, module.planned_steps // MIN_VALIDATIONS_PER_RUN))
    epoch = module.steps_per_epoch * module.passes_per_epoch
    most = max(1, min(settings.steps_per_batch, epoch, interval))
    group = max(d for d in range(1, most + 1) if epoch % d == 0)
    if group * 3 < most:
        group = most
    module.steps_per_batch = group
    if stream is not None:
        stream.group = group
    return max(1, interval // group)


@contextlib.contextmanager
def _tuned_for_training(sink):
    """Process settings for the fit: leave a core to a telemetry writer process, and freeze the GC's old heap."""
    from pipelines.training.telemetry import MlflowMetricSink

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


#: Models whose posterior is log-concave and near-Gaussian with enough data: each fit is compared with its Laplace
#: approximation (one L-BFGS fit and a dense Hessian on the training rows), which the gate may then trust.
LAPLACE_REFERENCE_KINDS = ("bayesian_linear_regression", "bayesian_logistic_regression")


def _reference_laplace(model, train_xy):
    """The Laplace approximation a GLM's fit is measured against (and, with ``guide.precondition: auto``, started
    from), or None when it cannot be formed (then q starts at ``init_scale`` and no ratio is logged)."""
    try:
        return laplace_approximation(model, *train_xy)
    except ValueError:
        return None


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
