"""A thin LightningModule over the ``models/`` ELBO (its loaders are in :mod:`pipelines.training.loaders`).

The module owns no logic beyond one ``_shared_step``: the objective lives in :mod:`models.objectives`, and logging,
NaN guards, averaging and early stopping live in :mod:`pipelines.callbacks`.
"""

from __future__ import annotations

import math

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from models.families import VariationalFamily
from models.objectives import elbo, held_out_fit
from pipelines.config.schema import TrainSettings
from pipelines.training.callbacks import GradientNorms
from pipelines.training.loaders import (
    MinibatchGroup,
    TensorTable,
    make_loader,
    passes_per_epoch,
    planned_steps,
    steps_per_epoch,
)
from pipelines.training.step_graph import StepGraphs
from pipelines.training.stream_batches import StreamedBatches, StreamedGroup

__all__ = ["MinibatchSVI", "SVIModule"]


def _overrides_step_hook(callback: pl.Callback) -> bool:
    return type(callback).on_before_optimizer_step is not pl.Callback.on_before_optimizer_step


class MinibatchSVI(pl.LightningModule):
    """What every viops LightningModule shares: index-slicing loaders and a loop of several SVI steps per batch.

    Optimisation is manual: each Lightning batch carries up to ``settings.steps_per_batch`` minibatches and
    ``training_step`` takes one Adam step on each, so Lightning's fixed per-batch cost is shared by several SVI steps
    (it dominates for small models). Every optimiser step still goes through Lightning's optimizer wrapper, so
    ``on_before_optimizer_step`` callbacks (gradient norms, telemetry, NaN guard) see every step, and
    ``trainer.global_step`` counts SVI steps. Subclasses give ``_shared_step`` and ``trained_parameters``.

    Args:
        settings: the ``train`` section of the config.
        train_xy, val_xy: ``(x, y)`` tensors of the training and validation splits.
        train_stream: a :class:`~pipelines.training.loaders.StreamedBatches` that replaces ``train_xy`` as the
            source of minibatches (``data.streaming``); ``train_xy`` is then a sample of the training rows.
    """

    def __init__(self, settings: TrainSettings, train_xy: tuple[torch.Tensor, torch.Tensor],
                 val_xy: tuple[torch.Tensor, torch.Tensor] | None = None, train_stream: StreamedBatches | None = None):
        super().__init__()
        self.automatic_optimization = False
        self.settings = settings
        self.train_xy, self.val_xy, self.train_stream = train_xy, val_xy, train_stream
        #: N: the ELBO scales a minibatch's likelihood by N / |B| on every rank, shard or not.
        self.dataset_size = train_stream.stream.train_rows if train_stream else int(train_xy[0].shape[0])
        #: Processes sharing each epoch (``train.strategy: ddp``); each takes its own shard of the rows.
        self.world_size = settings.world_size
        #: SVI steps per Lightning batch: at most ``settings.steps_per_batch`` (the fit sets it to divide a Lightning
        #: epoch's steps).
        self.steps_per_batch = settings.steps_per_batch
        #: Scalars of the current SVI step (device tensors, never synced here), read by the callbacks.
        self.step_stats: dict[str, torch.Tensor] = {}
        self._step_hooks: list[pl.Callback] | None = None
        #: The training step captured as CUDA graphs (``train.cuda_graph``); whether this fit ran on a CUDA device,
        #: and how many of its steps were replays of a captured step.
        self._graphs = StepGraphs(enabled=False)
        self.on_cuda, self.graphed_steps = False, 0

    def _set_step_stats(self, stats: dict[str, torch.Tensor]) -> None:
        """Replace :attr:`step_stats` (every step): a plain attribute write, without ``nn.Module.__setattr__``'s
        search of the parameter, buffer and submodule tables."""
        object.__setattr__(self, "step_stats", stats)

    def trained_parameters(self):
        """``(name, parameter)`` pairs that the optimiser updates (gradient norms are logged per pair)."""
        raise NotImplementedError

    def _shared_step(self, batch, stage: str) -> torch.Tensor:
        raise NotImplementedError

    @property
    def planned_steps(self) -> int:
        """SVI steps in a run that reaches ``max_epochs`` (the horizon of the step-size schedule)."""
        return planned_steps(self.dataset_size, self.settings, self.world_size)

    @property
    def steps_per_epoch(self) -> int:
        return steps_per_epoch(self.dataset_size, self.settings.batch_size, self.world_size)

    @property
    def passes_per_epoch(self) -> int:
        """Passes over the training rows (the config's epochs) per Lightning epoch: several on a small table (see
        :func:`~pipelines.training.loaders.passes_per_epoch`), one for a streamed source."""
        if self.train_stream is not None:
            return 1
        return passes_per_epoch(self.steps_per_epoch, self.settings.max_epochs, self.world_size)

    # -- data -------------------------------------------------------------------------------------------------------

    def _table(self, xy: tuple[torch.Tensor, torch.Tensor]) -> TensorTable:
        return TensorTable(xy[0].to(self.device), xy[1].to(self.device))

    def train_dataloader(self) -> DataLoader:
        if self.train_stream is not None:
            return self.train_stream.loader()
        return make_loader(
            self._table(self.train_xy), self.settings.batch_size, shuffle=True, seed=self.settings.seed,
            group=self.steps_per_batch, rank=self.global_rank, world_size=self.world_size,
            passes=self.passes_per_epoch,
        )

    def val_dataloader(self) -> DataLoader | list:
        if self.val_xy is None or self.val_xy[0].shape[0] == 0:
            return []
        table = self._table(self.val_xy)
        return make_loader(table, max(len(table), 1), shuffle=False, seed=0)

    # -- steps ------------------------------------------------------------------------------------------------------

    def on_fit_start(self) -> None:
        trainer = self.trainer
        if trainer.world_size > 1 and self.settings.steps_per_batch > 1:
            # DDP expects one backward per forward of the wrapped module; grouped steps would break its reducer.
            raise ValueError(
                f"train.steps_per_batch={self.settings.steps_per_batch} needs a single process; "
                f"with {trainer.world_size} processes (DDP) set train.steps_per_batch=1"
            )
        # One process in full precision: each SVI step runs the callbacks' per-step hook directly (_plain_step).
        plain = trainer.world_size == 1 and str(trainer.precision) in ("32-true", "32")
        self._step_hooks = [cb for cb in trainer.callbacks if _overrides_step_hook(cb)] if plain else None
        # A captured step computes the gradient norms inside its graph.
        self._graph_hooks = [cb for cb in self._step_hooks or () if not isinstance(cb, GradientNorms)]
        self.on_cuda, self.graphed_steps = self.device.type == "cuda", 0
        self._graphs = StepGraphs(enabled=plain and self.on_cuda and self.settings.cuda_graph
                                  and self._graph_capturable())
        if trainer.world_size > 1:
            torch.manual_seed(self.settings.seed + 7919 * trainer.global_rank)  # independent draws of z per rank

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        optimizer = self.optimizers()
        scheduler = self.lr_schedulers()
        loss = None
        for minibatch in batch if isinstance(batch, (MinibatchGroup, StreamedGroup)) else [batch]:
            graph = self._graphs.for_minibatch(self, minibatch) if self._graphs.enabled else None
            if graph is not None:
                loss = graph.step(self, *minibatch)
                self._hooks_and_update(optimizer, self._graph_hooks)
            elif self._step_hooks is not None:
                loss = self._shared_step(minibatch, "train")
                self._plain_step(optimizer, loss)
            else:
                loss = self._shared_step(minibatch, "train")
                optimizer.zero_grad(set_to_none=True)
                self.manual_backward(loss)
                if self.settings.gradient_clip_val is not None:
                    self.clip_gradients(optimizer, gradient_clip_val=self.settings.gradient_clip_val,
                                        gradient_clip_algorithm="norm")
                optimizer.step()
            if scheduler is not None:
                scheduler.step()
            if self.trainer.should_stop:
                break
        return loss.detach()

    def _plain_step(self, optimizer, loss: torch.Tensor) -> None:
        """One SVI step in one process at full precision, without Lightning's per-step wrappers.

        ``optimizer.step()`` would go through the strategy, the precision plugin and a closure that calls
        ``on_before_optimizer_step`` on every callback under a profiler context: at a small model's step time that
        costs more than the step. Here the callbacks that implement the hook (:attr:`_step_hooks`, found at fit
        start) are called directly, with the same arguments and at the same point (after backward and clipping,
        before the update), and Lightning's step count advances as ``LightningOptimizer.step`` advances it.
        DDP and mixed precision take the wrapped path.
        """
        raw = optimizer.optimizer
        for group in raw.param_groups:  # zero_grad(set_to_none=True) without its profiler region and dynamo guard
            for parameter in group["params"]:
                parameter.grad = None
        loss.backward()
        if self.settings.gradient_clip_val is not None:
            torch.nn.utils.clip_grad_norm_([p for _, p in self.trained_parameters()], self.settings.gradient_clip_val)
        self._hooks_and_update(optimizer, self._step_hooks)

    def _hooks_and_update(self, optimizer, hooks: list[pl.Callback]) -> None:
        """The per-step hook of ``hooks``, then the optimiser's update (the gradients are this step's)."""
        raw, trainer = optimizer.optimizer, self.trainer
        for callback in hooks:
            callback.on_before_optimizer_step(trainer, self, raw)
        optimizer._on_before_step()  # the manual loop's step progress (trainer.global_step) and profiler
        raw.step()
        optimizer._on_after_step()

    # -- CUDA graphs (train.cuda_graph) -----------------------------------------------------------------------------

    def _graph_capturable(self) -> bool:
        """Whether every training step does the same device work (a graph replays what it captured): subclasses
        whose step depends on host values that change (a KL warm-up weight) say no."""
        return True

    def on_train_end(self) -> None:
        self.graphed_steps += self._graphs.release(self)

    def validation_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "val")

    def _log_validation(self, values: dict, rows: int) -> None:
        """Log one validation's ``values`` (names to tensors or numbers; ``val_elbo`` among them).

        ``val_elbo`` goes to Lightning, whose early stopping and the status line read it. Every value goes to the run
        through the fit's logger, at the SVI step: the x axis of the per-step telemetry (``elbo``), not Lightning's
        count of batches (one batch carries up to steps_per_batch steps). Lightning's ``self.log`` would cost ~0.3 ms
        a value (it moves its result object to the device at every call), and the validation set is one batch, so
        there is nothing for it to aggregate.
        """
        self.log("val_elbo", values["val_elbo"], prog_bar=True, logger=False, batch_size=rows)
        if self.logger is not None:
            self.logger.log_metrics({name: float(value) for name, value in values.items()}, step=self.global_step)

    # -- optimisation -----------------------------------------------------------------------------------------------

    def configure_optimizers(self):
        s = self.settings
        # fused: one kernel for every parameter's update (foreach Adam launches about ten per step, a loop of
        # kernels per parameter without it); the same algorithm.
        optimizer = torch.optim.Adam([p for _, p in self.trained_parameters()], lr=s.lr, betas=tuple(s.betas),
                                     fused=True)
        if s.schedule.kind == "constant":
            return optimizer
        total, floor = max(self.planned_steps, 1), s.schedule.final_lr_ratio

        def cosine(step: int) -> float:
            progress = min(step, total) / total
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class SVIModule(MinibatchSVI):
    """Stochastic variational inference for a global-latent ``model`` with variational family ``family``.

    The module owns one ``_shared_step``: the ELBO lives in :mod:`models.objectives`.

    Args:
        model: a ``models/`` model (log-likelihood, log-prior, predictive).
        family: the variational family; its parameters are the only trainable ones.
        settings: the ``train`` section of the config.
        train_xy, val_xy: ``(x, y)`` tensors of the training and validation splits.
    """

    def __init__(
        self,
        model,
        family: VariationalFamily,
        settings: TrainSettings,
        train_xy: tuple[torch.Tensor, torch.Tensor],
        val_xy: tuple[torch.Tensor, torch.Tensor] | None = None,
        train_stream: StreamedBatches | None = None,
    ):
        super().__init__(settings, train_xy, val_xy, train_stream)
        self.model, self.family = model, family
        #: Mirrored particle pairs where the family is symmetric about its mean (the Gaussians); flows draw plainly.
        self.antithetic = settings.antithetic and family.symmetric

    def trained_parameters(self):
        return self.family.named_parameters()

    def on_fit_start(self) -> None:
        self.model.to(self.device)
        super().on_fit_start()

    def _shared_step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        s = self.settings
        if stage == "train":
            terms = elbo(self.model, self.family, x, y, dataset_size=self.dataset_size,
                         num_particles=s.num_particles, antithetic=self.antithetic)
            self._set_step_stats({
                "elbo": terms.elbo.detach(),
                "expected_log_likelihood": terms.expected_log_likelihood.detach(),
                "kl": terms.kl.detach(),
            })
            return terms.elbo * (-1.0 / self.dataset_size)  # one operation (and one backward node) for -elbo / N
        # Validation: per-datum ELBO on held-out rows (KL shared out over the training rows) and predictive NLL.
        fit = held_out_fit(self.model, self.family, x, y, train_size=self.dataset_size,
                           num_samples=s.eval_particles, antithetic=self.antithetic)
        self._log_validation({"val_elbo": fit.elbo_per_datum, "val_predictive_nll": fit.predictive_nll}, x.shape[0])
        return fit.elbo_per_datum

