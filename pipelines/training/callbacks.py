"""Lightning callbacks: gradient norms, the non-finite guard, step telemetry, convergence stopping.

Iterate averaging is :mod:`pipelines.training.averaging`.

Per-step values stay on the device as tensors and are read back once per flush, so telemetry adds no host sync and
no tracking request per step.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping
from pytorch_lightning.callbacks.early_stopping import EarlyStoppingReason

from pipelines.training.telemetry import TelemetryError

__all__ = ["LastCheckpoint", "GradientNorms", "NonFiniteGuard", "StepTelemetry", "ConvergenceEarlyStopping",
           "ValidationTime", "gradient_norms"]


class _CachedStateKey:
    """Compute ``state_key`` once: Lightning formats it on every hook dispatch, for every callback, every step."""

    @property
    def state_key(self) -> str:
        if "_cached_state_key" not in self.__dict__:
            self.__dict__["_cached_state_key"] = super().state_key
        return self.__dict__["_cached_state_key"]


class LastCheckpoint(pl.Callback):
    """Write ``last.ckpt`` every ``every_seconds`` of training, atomically (a crash mid-write leaves the previous one).

    Time-based rather than per-epoch: with small data an epoch can take milliseconds, and a checkpoint each epoch
    would cost more than the training. (Lightning's ``ModelCheckpoint(train_time_interval=...)`` never fires for a
    module with manual optimization, as the SVI modules are.) Under DDP rank 0's clock decides for every rank.
    """

    def __init__(self, dirpath, every_seconds: float):
        self.dirpath, self.every_seconds, self._last = Path(dirpath), every_seconds, time.monotonic()

    def on_train_start(self, trainer, pl_module) -> None:
        self._last = time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        due = time.monotonic() - self._last >= self.every_seconds
        if trainer.strategy.broadcast(due) if trainer.world_size > 1 else due:  # rank 0's clock decides
            self.save(trainer)

    def save(self, trainer) -> Path:
        self.dirpath.mkdir(parents=True, exist_ok=True)
        partial, final = self.dirpath / ".last.ckpt.partial", self.dirpath / "last.ckpt"
        trainer.save_checkpoint(partial)
        if trainer.is_global_zero:
            os.replace(partial, final)
        self._last = time.monotonic()
        return final


class ValidationTime(pl.Callback):
    """Wall time of the fit's validation checks (from Lightning's validation start to its end), so that a run
    tells how much of its fit went to validating (``final/validation_seconds``) and how much to the SVI steps."""

    def __init__(self):
        self.seconds = 0.0
        self._started: float | None = None

    def on_validation_start(self, trainer, pl_module) -> None:
        self._started = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._started is not None:
            self.seconds += time.perf_counter() - self._started
            self._started = None


class GradientNorms(pl.Callback):
    """Record the L2 gradient norm of every trained parameter, in ``pl_module.step_stats["grad_norm/<name>"]``.

    One fused ``_foreach_norm`` per step; the total norm and the non-finite count are derived on the host when the
    telemetry is flushed, so this adds no host sync. A step captured as a CUDA graph computes the norms inside its
    graph with the same :func:`gradient_norms` (:mod:`pipelines.training.step_graph`), and skips this callback.
    """

    def __init__(self):
        self._keys: list[str] | None = None
        self._parameters: list[torch.Tensor] = []

    def on_train_start(self, trainer, pl_module) -> None:
        named = list(pl_module.trained_parameters())
        self._keys, self._parameters = [f"grad_norm/{name}" for name, _ in named], [p for _, p in named]

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self._keys is None:
            self.on_train_start(trainer, pl_module)
        pl_module.step_stats.update(gradient_norms(self._keys, self._parameters))


def gradient_norms(keys: list[str], parameters: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{key: L2 norm of the parameter's gradient}`` in one fused ``_foreach_norm``, for the parameters the loss
    reached (those with a gradient)."""
    grads = [p.grad for p in parameters]
    if any(g is None for g in grads):  # a parameter the loss did not reach this step
        keys, grads = [k for k, g in zip(keys, grads) if g is not None], [g for g in grads if g is not None]
    return dict(zip(keys, torch._foreach_norm(grads))) if grads else {}


class NonFiniteGuard(pl.Callback):
    """Stop training once a NaN/inf appears in the ELBO terms or gradient norms, and say when.

    Checks every ``check_every_n_steps`` steps (one host sync each): a non-finite value poisons the parameters, so it
    is still visible at the next check. ``failure_reason`` is set when it fires; the caller marks the run FAILED.
    """

    def __init__(self, check_every_n_steps: int = 50):
        self.check_every_n_steps = check_every_n_steps
        self.failure_reason: str | None = None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if trainer.global_step % self.check_every_n_steps == 0:
            self.check(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.check(trainer, pl_module)

    def check(self, trainer, pl_module) -> None:
        stats = pl_module.step_stats
        if not stats or self.failure_reason is not None:
            return
        # One read-back for every value: a GPU step waits for the device once per check, not once per value.
        finite = torch.stack([torch.isfinite(value).all() for value in stats.values()]).tolist()
        bad = [name for name, ok in zip(stats, finite) if not ok]
        if bad:
            self.failure_reason = (
                f"non-finite {', '.join(bad)} at step {trainer.global_step} (epoch "
                f"{trainer.global_step // max(pl_module.steps_per_epoch, 1) + 1}); "
                "training stopped and nothing is registered"
            )
            trainer.should_stop = True


class StepTelemetry(pl.Callback):
    """Collect every SVI step's scalars and hand them to ``sink`` as one row per window of ``every_n_steps`` steps,
    in batches of about ``flush_every_n_steps`` steps.

    Per step it keeps references to the step's scalars (device tensors, no sync); a flush stacks them in one operation,
    reads them back in one transfer, adds ``grad_norm/total`` and ``nan_count`` (non-finite values among the step's
    scalars), and reduces each window of steps to one row at its last step: the mean of every series over the window,
    ``nan_count`` summed (a single non-finite step shows), ``lr`` at the last step. With ``every_n_steps=1`` every
    step is a row. A window is sent once it is complete (or when training ends), so no step is logged twice. The
    series are fixed at the first step, so this callback goes after :class:`GradientNorms` in the list.

    Args:
        sink: called as ``sink(names, rows)`` with ``rows = [(step, timestamp_ms, [values...]), ...]``.
        flush_every_n_steps: steps per batch sent to the sink.
        every_n_steps: steps per logged row.
    """

    def __init__(self, sink: Callable[[list[str], list], None], flush_every_n_steps: int = 500,
                 every_n_steps: int = 1):
        self.sink = sink
        self.flush_every_n_steps = flush_every_n_steps
        self.every_n_steps = every_n_steps
        self.names: list[str] | None = None
        self._values: list[list[torch.Tensor]] = []  # per step, its scalars in ``names`` order
        self._meta: list[tuple[int, float, int]] = []
        #: Every step's ``elbo`` (host floats), for the ELBO-curve plot.
        self.elbo_history: list[tuple[int, float]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        stats = pl_module.step_stats
        if self.names is None:
            self.names = sorted(stats)
        self._values.append([stats[name] for name in self.names])
        self._meta.append((trainer.global_step, optimizer.param_groups[0]["lr"], int(time.time() * 1000)))
        if len(self._values) >= self.flush_every_n_steps:
            self.flush(final=False)

    def on_train_end(self, trainer, pl_module) -> None:
        self.flush()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        """Hand over the steps still held: delivered, or spooled for ``--resume`` when the server is down."""
        try:
            self.flush()
        except TelemetryError:
            pass  # the run is failing already; its own error is the one to report

    def flush(self, final: bool = True) -> None:
        """Send the complete windows collected so far (every window when ``final``)."""
        if not self._values:
            return
        k = self.every_n_steps
        steps = torch.tensor([step for step, _, _ in self._meta])
        windows = torch.div(steps, k, rounding_mode="floor")
        keep = 0
        if not final and (int(steps[-1]) + 1) % k:  # the last window is still filling: keep it for the next flush
            keep = int((windows == windows[-1]).sum())
            if keep == len(self._meta):
                return
        cut = len(self._meta) - keep
        width = len(self.names)
        table = torch.stack([value for step in self._values[:cut] for value in step]).view(cut, width).float().cpu()
        grad_cols = [i for i, name in enumerate(self.names) if name.startswith("grad_norm/")]
        total = table[:, grad_cols].pow(2).sum(1).sqrt() if grad_cols else torch.zeros(len(table))
        nan_count = (~torch.isfinite(table)).sum(1).float()
        per_step = torch.cat([table, total[:, None], nan_count[:, None]], 1)
        names = [*self.names, "grad_norm/total", "nan_count", "lr"]
        elbo_at = names.index("elbo")
        self.elbo_history.extend(zip(steps[:cut].tolist(), per_step[:, elbo_at].tolist()))
        _, inverse, counts = torch.unique_consecutive(windows[:cut], return_inverse=True, return_counts=True)
        sums = torch.zeros(len(counts), per_step.shape[1]).index_add_(0, inverse, per_step)
        rows_values = sums / counts[:, None]
        rows_values[:, -1] = sums[:, -1]  # nan_count: summed over the window
        last = (torch.cumsum(counts, 0) - 1).tolist()
        rows = [(self._meta[i][0], self._meta[i][2], [*values, self._meta[i][1]])
                for i, values in zip(last, rows_values.tolist())]
        self._values, self._meta = self._values[cut:], self._meta[cut:]
        self.sink(names, rows)


class ConvergenceEarlyStopping(_CachedStateKey, EarlyStopping):
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

