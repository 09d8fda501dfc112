"""Progress of a fit for a person watching it: a bar on a terminal, a plain status line in a log."""

from __future__ import annotations

import sys
import time

import pytorch_lightning as pl

from pipelines.training.callbacks import _CachedStateKey

__all__ = ["TrainingProgress"]


class TrainingProgress(_CachedStateKey, pl.Callback):
    """Progress of a fit on ``stream`` (stderr): steps done of those planned, the minibatch ELBO per datum (and the
    last validation ELBO per datum), steps per second and the time left at that rate.

    On a terminal it is one line redrawn in place, at most every ``refresh_seconds``; elsewhere (an Airflow task
    log, CI) it is one plain line every ``every_seconds``, so a log shows that training is alive and how far it got
    without a line per step. Early stopping can end a fit before the planned steps: the time left is an upper
    bound. Only rank 0 reports.
    """

    def __init__(self, planned_steps: int, dataset_size: int, *, stream=None, tty: bool | None = None,
                 every_seconds: float = 30.0, refresh_seconds: float = 0.25, width: int = 24):
        self.planned, self.dataset_size = max(1, planned_steps), max(1, dataset_size)
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.every = refresh_seconds if self.tty else every_seconds
        self.width = width
        self._started = self._shown = 0.0
        self._first_step = 0
        self._drawn = False

    def on_train_start(self, trainer, pl_module) -> None:
        self._started = self._shown = time.monotonic()
        self._first_step = trainer.global_step  # a resumed fit: the rate counts this process's steps only
        if trainer.is_global_zero and not self.tty:
            self._write(f"training: {self.planned:,} steps planned, status every {self.every:.0f} s")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.monotonic()
        if trainer.is_global_zero and now - self._shown >= self.every:
            self._shown = now
            self._write(self.status(trainer, pl_module, now))

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self._write(self.status(trainer, pl_module, time.monotonic(), done=True))
            if self.tty and self._drawn:
                self.stream.write("\n")
                self.stream.flush()

    def status(self, trainer, pl_module, now: float, done: bool = False) -> str:
        """One status line (the bar's text on a terminal)."""
        step = trainer.global_step
        elapsed = max(now - self._started, 1e-9)
        rate = (step - self._first_step) / elapsed
        fraction = min(step / self.planned, 1.0)
        parts = [f"step {step:,}/{self.planned:,}", f"{100 * fraction:3.0f}%"]
        if self.tty:
            filled = round(self.width * fraction)
            parts.insert(1, "[" + "#" * filled + "-" * (self.width - filled) + "]")
        elbo = pl_module.step_stats.get("elbo") if getattr(pl_module, "step_stats", None) else None
        if elbo is not None:
            parts.append(f"ELBO/datum {float(elbo) / self.dataset_size:.4g}")
        validation = trainer.callback_metrics.get("val_elbo")
        if validation is not None:
            parts.append(f"val {float(validation):.4g}")
        parts.append(f"{rate:,.0f} steps/s")
        if done:
            parts.append(f"done in {_clock(elapsed)}")
        elif rate > 0:
            parts.append(f"ETA {_clock((self.planned - step) / rate)}")
        return "  ".join(parts)

    def _write(self, line: str) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + line)
            self._drawn = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def _clock(seconds: float) -> str:
    """``h:mm:ss`` (or ``m:ss`` under an hour)."""
    minutes, secs = divmod(int(round(max(seconds, 0.0))), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
