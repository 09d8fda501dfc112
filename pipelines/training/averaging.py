"""Polyak-Ruppert iterate averaging over the end of a fit, without host syncs (a Lightning callback)."""

from __future__ import annotations

import pytorch_lightning as pl
import torch

__all__ = ["IterateAveraging", "AVERAGE_EVERY", "MIN_AVERAGED"]

#: Average at most every this many iterates, and keep at least MIN_AVERAGED of them (IterateAveraging).
AVERAGE_EVERY, MIN_AVERAGED = 8, 50


class IterateAveraging(pl.Callback):
    """Polyak-Ruppert averaging of the variational parameters over the last ``fraction`` of the planned steps.

    Averaging the iterates of a decaying-step SGD removes the jitter that minibatch noise leaves in the final iterate
    (Polyak & Juditsky 1992). Each update is one ``torch._foreach_lerp_``, as in ``swa_utils.get_swa_multi_avg_fn``,
    with the count on the host (``AveragedModel`` reads its device count back twice per update, stalling a GPU step).
    It averages every ``every``-th iterate of the window (up to :data:`AVERAGE_EVERY`, keeping at least
    :data:`MIN_AVERAGED`): consecutive iterates at a small step size are nearly equal, so thinning leaves the average
    as it was while the update stops costing a share of every small model's step. The average replaces the family's
    parameters at the end of training; checkpoints keep it in ``AveragedModel``'s layout.
    """

    def __init__(self, fraction: float):
        self.fraction = fraction
        self.averaged: dict[str, torch.Tensor] | None = None  # parameter name -> running mean
        self.start_step: int | None = None
        self.every = 1
        self.num_averaged = 0
        self._restored: dict | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        total = int(getattr(pl_module, "planned_steps", trainer.estimated_stepping_batches))
        self.start_step = int(total * (1.0 - self.fraction)) if self.fraction > 0 else None
        self.every = max(1, min(AVERAGE_EVERY, (total - (self.start_step or 0)) // MIN_AVERAGED))
        restored, self._restored = self._restored, None
        if restored is not None:  # resumed from a checkpoint taken while averaging
            self.averaged = {name: restored[f"module.{name}"].to(p.device).clone()
                             for name, p in pl_module.family.named_parameters()}

    def state_dict(self) -> dict:
        """The running average, so that a resumed run goes on averaging where it stopped."""
        averaged = None if self.averaged is None else {
            **{f"module.{name}": value for name, value in self.averaged.items()},
            "n_averaged": torch.tensor(self.num_averaged, dtype=torch.long)}
        return {"num_averaged": self.num_averaged, "averaged": averaged}

    def load_state_dict(self, state_dict: dict) -> None:
        self.num_averaged = state_dict.get("num_averaged", 0)
        self._restored = state_dict.get("averaged")

    def _update(self, family) -> None:
        params = dict(family.named_parameters())
        with torch.no_grad():
            if self.averaged is None or self.num_averaged == 0:
                self.averaged = {name: p.detach().clone() for name, p in params.items()}
            else:
                names = list(self.averaged)
                torch._foreach_lerp_([self.averaged[n] for n in names], [params[n].detach() for n in names],
                                     1.0 / (self.num_averaged + 1))
        self.num_averaged += 1

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        # The parameters here are the iterate produced by the previous step.
        if self.start_step is None or trainer.global_step <= self.start_step:
            return
        if (trainer.global_step - self.start_step) % self.every:
            return
        self._update(pl_module.family)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.averaged is None:
            return
        self._update(pl_module.family)  # include the final iterate
        with torch.no_grad():
            for name, target in pl_module.family.named_parameters():
                target.copy_(self.averaged[name])
