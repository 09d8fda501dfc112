"""Measuring an amortized model (the VAE): its inference gaps during training, and its final metrics.

:class:`AmortizationDiagnostics` measures the amortization and approximation gaps (Cremer, Li & Duvenaud 2018) on a
fixed subsample of validation rows every few validations, within a time budget, and logs them as
``amortization/*``. :func:`amortized_final_metrics` gives the final ELBO, ``-log p̂(x)`` (IWAE), the gaps and the
posterior-collapse measures (active units, per-dimension KL) on the held-out rows, with a seeded generator.
"""

from __future__ import annotations

import time

import pytorch_lightning as pl
import torch

from models.amortized import amortization_gaps, amortized_bound, collapse_statistics, iwae_bound
from pipelines.config.schema import AmortizationConfig, TrainSettings

__all__ = ["AmortizationDiagnostics", "amortized_final_metrics", "gap_fraction_budget"]

#: Measuring the gaps during training may take at most this share of the elapsed training time.
gap_fraction_budget = 0.10


class AmortizationDiagnostics(pl.Callback):
    """Measure the amortization and approximation gaps on a fixed subsample of validation rows during training.

    A measurement follows a validation check, and is skipped when it would take the time spent measuring above
    ``budget`` of the training time so far (its cost is known from the previous measurement), so the trajectory is
    as dense as the budget allows. The values go to the logger as ``amortization/*`` and into :attr:`history`.
    """

    def __init__(self, rows: torch.Tensor, settings: AmortizationConfig, *, every_n_validations: int,
                 budget: float = gap_fraction_budget, seed: int = 0):
        self.rows, self.settings, self.budget, self.seed = rows, settings, budget, seed
        self.every_n_validations = every_n_validations
        self.history: list[tuple[int, dict[str, float]]] = []
        self.seconds = 0.0
        self._validations = 0
        self._pending = False
        self._started: float | None = None
        self._last_cost = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self._started = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._validations += 1
            self._pending = self._pending or self._validations % self.every_n_validations == 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # Here, not in the validation hooks: refining q* needs gradients, and validation runs in inference mode.
        if not self._pending:
            return
        now = time.perf_counter()
        elapsed = now - (self._started if self._started is not None else now)
        if self.history and self.seconds + self._last_cost > self.budget * elapsed:
            return  # over budget for now; try again after the next validation
        self._pending = False
        self.measure(trainer, pl_module)

    def measure(self, trainer, pl_module) -> dict[str, float]:
        started = time.perf_counter()
        s = self.settings
        gaps = amortization_gaps(pl_module.model, self.rows.to(pl_module.device), refine_steps=s.refine_steps,
                                 lr=s.refine_lr, log_marginal_samples=s.log_marginal_samples, seed=self.seed)
        values = {
            "amortization/elbo": gaps.elbo,
            "amortization/refined_elbo": gaps.refined_elbo,
            "amortization/log_marginal": gaps.log_marginal,
            "amortization/amortization_gap": gaps.amortization_gap,
            "amortization/approximation_gap": gaps.approximation_gap,
        }
        self.history.append((trainer.global_step, values))
        if trainer.logger is not None:
            trainer.logger.log_metrics(values, step=trainer.global_step)
        self._last_cost = time.perf_counter() - started
        self.seconds += self._last_cost
        return values


def amortized_final_metrics(model, data_splits: dict[str, torch.Tensor], train_rows: torch.Tensor,
                            settings: TrainSettings, amortization: AmortizationConfig) -> dict[str, float]:
    """Final ELBO, ``-log p̂(x)`` (IWAE), gaps and collapse measures of a trained amortized model, per datum.

    ``data_splits`` maps split names (``validation``, ``test``) to feature tensors; the gaps use the first
    ``amortization.subsample`` rows of the test split (else validation), the collapse measures all its rows.
    """
    model = model.to("cpu").eval()
    out: dict[str, float] = {}
    generator = torch.Generator().manual_seed(settings.seed + 1)
    held_out = None
    with torch.no_grad():
        for split, x in data_splits.items():
            if not len(x):
                continue
            held_out = x
            bound = amortized_bound(model, x, num_samples=settings.eval_particles, generator=generator)
            log_marginal = iwae_bound(model, x, amortization.log_marginal_samples, generator=generator)
            out[f"{split}_elbo_per_datum"] = float(bound.elbo)
            out[f"{split}_predictive_nll"] = float(-log_marginal.mean())
        bound = amortized_bound(model, train_rows, num_samples=settings.eval_particles, generator=generator)
        out["train_elbo"] = float(bound.elbo)
        out["train_iwae"] = float(iwae_bound(model, train_rows, amortization.log_marginal_samples,
                                             generator=generator).mean())
    if held_out is not None:
        gaps = amortization_gaps(model, held_out[: amortization.subsample], refine_steps=amortization.refine_steps,
                                 lr=amortization.refine_lr, log_marginal_samples=amortization.log_marginal_samples,
                                 seed=settings.seed)
        collapse = collapse_statistics(model, held_out, amortization.active_unit_threshold)
        out.update({
            "amortization_gap": gaps.amortization_gap,
            "approximation_gap": gaps.approximation_gap,
            "active_units": float(collapse.active_units),
            "posterior_sd_mean": collapse.posterior_sd_mean,
            "kl_min_dim": float(collapse.kl_per_dim.min()),
            "kl_max_dim": float(collapse.kl_per_dim.max()),
        })
    return out
