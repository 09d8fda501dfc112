"""What a finished fit is measured by before it is logged: held-out ELBO and NLL, calibration, PSIS k-hat, gaps.

Global-latent models get the validation/test ELBO per datum and predictive NLL, the PSIS k-hat and the
approximation gap on the training rows (Yao et al. 2018), calibration on the test split (else validation) with its
plot, and the SD ratio to the Laplace approximation when the family was started from it. Amortized models get
:func:`~pipelines.diagnostics.amortization.amortized_final_metrics`. The diagnostics on training rows use a seeded
sample of ``train.diagnostic_rows`` of a larger table.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from models.diagnostics import importance_diagnostics
from pipelines.config.schema import TrainConfig
from pipelines.training.data import PreparedData
from pipelines.training.evaluation import calibration_metrics, held_out_metrics, seeded_rows, split_tensors
from pipelines.training.fit import Fit
from pipelines.training.result import TrainingFailed

__all__ = ["diagnostic_rows", "final_metrics", "laplace_trusted"]

#: Training rows per latent dimension from which a GLM posterior is taken to be Gaussian (Bernstein-von Mises).
ROWS_PER_DIM_FOR_LAPLACE = 10


def laplace_trusted(config: TrainConfig, model, rows: int) -> bool:
    """Whether the Laplace approximation is a trustworthy reference for the posterior SDs: a linear regression with
    fixed noise (its posterior *is* that Gaussian), or a linear/logistic regression with at least
    ``ROWS_PER_DIM_FOR_LAPLACE`` training rows per latent dimension (the posterior is then close to Gaussian)."""
    from pipelines.training.fit import LAPLACE_REFERENCE_KINDS

    kind = config.model.kind
    if kind not in LAPLACE_REFERENCE_KINDS:
        return False
    exact = kind == "bayesian_linear_regression" and config.model.noise.fixed is not None
    return exact or rows >= ROWS_PER_DIM_FOR_LAPLACE * model.latent_dim


def diagnostic_rows(train_xy: tuple[torch.Tensor, torch.Tensor], settings) -> tuple[torch.Tensor, torch.Tensor]:
    """The training rows the final diagnostics use: all of them up to ``settings.diagnostic_rows``, else a seeded
    sample of that many (k-hat's ``khat_samples`` draws are each a pass over them: on a 1M-row table they would
    otherwise cost hundreds of epochs, and ~13 GB for the BNN's hidden layer)."""
    return seeded_rows(train_xy, settings.diagnostic_rows, settings.seed)


def final_metrics(config: TrainConfig, data: PreparedData, done: Fit, workdir: Path) -> tuple[dict[str, float],
                                                                                            Path | None]:
    """``(metrics, calibration plot or None)`` of a finished fit, logged as ``final/<name>``.

    Raises:
        TrainingFailed: a metric is NaN/inf (the posterior is unusable).
    """
    settings = config.train
    calibration_plot = None
    if done.family is None:
        from pipelines.diagnostics.amortization import amortized_final_metrics

        splits = {"validation": done.val_xy[0],
                  "test": split_tensors(data.test, data.features, data.target, done.stats)[0]}
        metrics = amortized_final_metrics(done.model, splits, diagnostic_rows(done.train_xy, settings)[0], settings,
                                          config.amortization)
        if done.gaps is not None:
            metrics["amortization_time_fraction"] = done.gaps.seconds / done.seconds if done.seconds > 0 else 0.0
    else:
        model, family = done.module.model, done.module.family
        metrics = held_out_metrics(model, family, data, done.stats, settings)
        importance = importance_diagnostics(model, family, *diagnostic_rows(done.train_xy, settings),
                                            num_samples=settings.khat_samples, seed=settings.seed,
                                            dataset_size=data.train_rows)
        metrics.update({"psis_khat": importance.khat, "train_elbo": importance.elbo, "train_iwae": importance.iwae,
                        "approximation_gap": importance.approximation_gap})
        calibration, calibration_plot = calibration_metrics(model, family, data, done.stats, settings, workdir,
                                                            config.name)
        metrics.update(calibration)
        if done.laplace is not None:  # q much narrower than the Laplace Gaussian: the signature of a too-simple family
            ratio = family.stddev.detach().cpu() / done.laplace.marginal_sd
            metrics.update({"sd_ratio_to_laplace_min": float(ratio.min()),
                            "sd_ratio_to_laplace_max": float(ratio.max()),
                            "laplace_trusted": float(laplace_trusted(config, model, data.train_rows))})
    steps = float(done.trainer.global_step)
    epochs = float(math.ceil(steps / max(done.module.steps_per_epoch, 1)))  # passes over the rows begun
    metrics.update({"train_seconds": done.seconds, "validation_seconds": done.validation_time.seconds, "steps": steps,
                    "epochs": epochs})
    metrics["steps_per_second"] = steps / done.seconds if done.seconds > 0 else 0.0
    if getattr(done.module, "on_cuda", False):  # 0: the step ran eagerly (train.cuda_graph: false, or not capturable)
        metrics["graphed_steps"] = float(done.module.graphed_steps)
    if not all(np.isfinite(v) for v in metrics.values()):
        raise TrainingFailed(f"final metrics are not finite: {metrics}")
    return metrics, calibration_plot
