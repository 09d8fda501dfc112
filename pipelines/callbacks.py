"""Lightning callbacks: gradient norms, the non-finite guard, step telemetry, iterate averaging, convergence stopping.

Per-step values stay on the device as tensors and are read back once per flush, so telemetry adds no host sync and
no tracking request per step.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping
from pytorch_lightning.callbacks.early_stopping import EarlyStoppingReason
from torch.optim.swa_utils import AveragedModel

__all__ = [
    "GradientNorms",
    "NonFiniteGuard",
    "StepTelemetry",
    "IterateAveraging",
    "ConvergenceEarlyStopping",
]


class GradientNorms(pl.Callback):
    """Record the L2 gradient norm of every variational parameter, their total, and the count of non-finite entries.

    Values are written into ``pl_module.step_stats`` as ``grad_norm/<param>``, ``grad_norm/total`` and ``nan_count``.
    """

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        named = [(n, p.grad) for n, p in pl_module.family.named_parameters() if p.grad is not None]
        if not named:
            return
        grads = [g for _, g in named]
        norms = torch._foreach_norm(grads)
        stats = pl_module.step_stats
        for (name, _), norm in zip(named, norms):
            stats[f"grad_norm/{name}"] = norm
        stats["grad_norm/total"] = torch.linalg.vector_norm(torch.stack(norms))
        nonfinite = sum((~torch.isfinite(g)).sum() for g in grads)
        loss_bad = sum((~torch.isfinite(v)).sum() for k, v in stats.items() if k in ("elbo", "kl"))
        stats["nan_count"] = (nonfinite + loss_bad).to(torch.float32)


class NonFiniteGuard(pl.Callback):
    """Stop training as soon as a NaN/inf appears in the loss or gradients, and say where.

    The check reads a device-side counter every ``check_every_n_steps`` steps (and at each epoch end) so it adds no
    per-step host sync; ``failure_reason`` is set when it fires, and the run is then marked FAILED by the caller.
    """

    def __init__(self, check_every_n_steps: int = 50):
        self.check_every_n_steps = check_every_n_steps
        self.failure_reason: str | None = None
        self._count: torch.Tensor | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        bad = pl_module.step_stats.get("nan_count")
        if bad is None:
            return
        self._count = bad if self._count is None else self._count + bad
        if trainer.global_step % self.check_every_n_steps == 0:
            self._check(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._check(trainer)

    def _check(self, trainer) -> None:
        if self._count is None or self.failure_reason is not None:
            return
        count = int(self._count.item())
        if count:
            self.failure_reason = (
                f"non-finite loss or gradients ({count} NaN/inf values) by step {trainer.global_step}, "
                f"epoch {trainer.current_epoch}; training stopped and nothing is registered"
            )
            trainer.should_stop = True


class StepTelemetry(pl.Callback):
    """Collect every training step's scalars and hand them to ``sink`` in batches of ``flush_every_n_steps`` steps.

    Args:
        sink: called as ``sink(names, rows)`` with ``rows = [(step, timestamp_ms, [values...]), ...]``.
        flush_every_n_steps: steps per batch sent to the sink.
    """

    def __init__(self, sink: Callable[[list[str], list], None], flush_every_n_steps: int = 500):
        self.sink = sink
        self.flush_every_n_steps = flush_every_n_steps
        self.names: list[str] | None = None
        self._values: list[torch.Tensor] = []
        self._meta: list[tuple[int, int]] = []
        #: Every step's ``elbo`` (host floats), for the ELBO-curve plot.
        self.elbo_history: list[tuple[int, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        stats = pl_module.step_stats
        if self.names is None:
            self.names = sorted(stats) + ["lr"]
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        row = [stats[name] for name in self.names[:-1]]
        self._values.append(torch.stack([v.to(torch.float32) for v in row]))
        self._meta.append((trainer.global_step, lr, int(time.time() * 1000)))
        if len(self._values) >= self.flush_every_n_steps:
            self.flush()

    def on_train_end(self, trainer, pl_module) -> None:
        self.flush()

    def flush(self) -> None:
        if not self._values:
            return
        table = torch.stack(self._values).cpu().tolist()
        rows = [(step, ts, [*values, lr]) for (step, lr, ts), values in zip(self._meta, table)]
        elbo_at = self.names.index("elbo")
        self.elbo_history.extend((step, values[elbo_at]) for step, _, values in rows)
        self._values, self._meta = [], []
        self.sink(self.names, rows)


class IterateAveraging(pl.Callback):
    """Polyak-Ruppert averaging of the variational parameters over the last ``fraction`` of the planned steps.

    Averaging the iterates of a decaying-step SGD removes the jitter that minibatch noise leaves in the final iterate
    (Polyak & Juditsky 1992); it uses :class:`torch.optim.swa_utils.AveragedModel`. At the end of training the
    averaged parameters are copied into the family.
    """

    def __init__(self, fraction: float):
        self.fraction = fraction
        self.averaged: AveragedModel | None = None
        self.start_step: int | None = None
        self.num_averaged = 0

    def on_train_start(self, trainer, pl_module) -> None:
        total = int(trainer.estimated_stepping_batches)
        self.start_step = int(total * (1.0 - self.fraction)) if self.fraction > 0 else None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.start_step is None or trainer.global_step <= self.start_step:
            return
        if self.averaged is None:
            self.averaged = AveragedModel(pl_module.family, use_buffers=False)
        self.averaged.update_parameters(pl_module.family)
        self.num_averaged += 1

    def on_train_end(self, trainer, pl_module) -> None:
        if self.averaged is None:
            return
        with torch.no_grad():
            for target, source in zip(pl_module.family.parameters(), self.averaged.module.parameters()):
                target.copy_(source)


class ConvergenceEarlyStopping(EarlyStopping):
    """Early stopping on validation ELBO that refuses to stop while the variational scales are still moving.

    A flat ELBO can hide posterior SDs that are still far too wide (the ELBO is insensitive to them near the
    optimum), so stopping also requires ``max |log sd_now - log sd_then| <= scale_rtol`` over the last ``patience``
    validation checks.
    """

    def __init__(self, *, scale_rtol: float, **kwargs):
        super().__init__(**kwargs)
        self.scale_rtol = scale_rtol
        self._log_sd_history: list[torch.Tensor] = []
        self.last_scale_change: float | None = None

    def on_validation_end(self, trainer, pl_module) -> None:
        log_sd = pl_module.family.stddev.detach().log().cpu()
        self._log_sd_history.append(log_sd)
        then = self._log_sd_history[max(0, len(self._log_sd_history) - 1 - self.patience)]
        self.last_scale_change = float((log_sd - then).abs().max())
        self._log_sd_history = self._log_sd_history[-(self.patience + 1) :]
        super().on_validation_end(trainer, pl_module)

    def _evaluate_stopping_criteria(self, current: torch.Tensor) -> tuple[bool, str | None]:
        should_stop, reason = super()._evaluate_stopping_criteria(current)
        stalled = should_stop and bool(torch.isfinite(current)) and self.wait_count >= self.patience
        if stalled and self.last_scale_change is not None and self.last_scale_change > self.scale_rtol:
            self.wait_count = 0  # the posterior is still tightening: not converged, keep going
            self.stopping_reason = EarlyStoppingReason.NOT_STOPPED
            return False, None
        if should_stop and reason:
            reason = f"{reason} Variational scales moved by at most {self.last_scale_change:.2%} over that window."
        return should_stop, reason

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["log_sd_history"] = copy.deepcopy(self._log_sd_history)
        return state
