"""posteriordb conformance: fit reference posteriors with each variational family and compare with NUTS draws.

Each (posterior, family) pair is an ordinary ``viops train`` run (one MLflow experiment, ``viops-conformance``), on all
of the posterior's data (no held-out split: the reference conditions on every row). The run's
``posterior_summary.json`` is compared per parameter with the reference draws: ``(mean_vi - mean_ref) / sd_ref`` and
``sd_vi / sd_ref``; the run's PSIS k-hat says whether the approximation itself can tell that it is off.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pipelines.config.schema import TrainConfig
from pipelines.diagnostics.posteriordb import ReferencePosterior, load_posterior

__all__ = ["ConformanceResult", "CONFORMANCE_TRAIN", "run_conformance", "fit_reference", "format_table"]

EXPERIMENT = "viops-conformance"

#: Training settings of conformance fits: full batch, annealed, averaged; the Laplace preconditioner puts every
#: coordinate on a unit scale, so one step size serves SDs of 0.001 and 10 alike.
CONFORMANCE_TRAIN = {
    "max_epochs": 3000,
    "lr": 0.02,
    "num_particles": 4,
    "early_stopping": {"enabled": False},
    "progress_bar": False,
    "eval_particles": 16,
    "khat_samples": 8000,  # k-hat from 1,000 draws moved by ±0.1 between seeds on these posteriors
}


@dataclass(frozen=True)
class ConformanceResult:
    """One (posterior, family) fit against its reference. ``parameters`` has one row per compared parameter."""

    posterior: str
    family: str
    max_abs_mean_err_sd: float
    min_sd_ratio: float
    max_sd_ratio: float
    psis_khat: float
    sd_ratio_to_laplace_min: float
    run_id: str
    seconds: float
    parameters: list[dict]

    def summary(self) -> dict:
        out = asdict(self)
        out.pop("parameters")
        return out


def _config(posterior: ReferencePosterior, family: str, data_path: Path, seed: int,
            max_epochs: int | None = None) -> TrainConfig:
    return TrainConfig.model_validate({
        "name": f"{posterior.name}-{family}".replace("_", "-"),
        "data": {"path": str(data_path), "target": posterior.target, "features": list(posterior.features),
                 "split": {"validation": 0.0, "test": 0.0}},
        "model": posterior.model.model_dump(),
        "guide": {"family": family, "precondition": "laplace"},
        "train": {**CONFORMANCE_TRAIN, "batch_size": len(posterior.frame), "seed": seed,
                  "max_epochs": max_epochs or CONFORMANCE_TRAIN["max_epochs"]},
        "registry": {"auto_register": False},
        "tracking": {"experiment": EXPERIMENT},
    })


def fit_reference(posterior: ReferencePosterior, family: str, *, tracking_uri: str | None = None,
                  seed: int = 0, max_epochs: int | None = None) -> ConformanceResult:
    """Train ``family`` on ``posterior`` through the training path (:func:`pipelines.training.run.run_training`;
    nothing is registered) and compare with the reference. ``max_epochs`` (full-batch steps) replaces
    :data:`CONFORMANCE_TRAIN`'s."""
    from mlflow import MlflowClient

    from pipelines.training.run import run_training

    with tempfile.TemporaryDirectory(prefix="viops-conformance-") as tmp:
        data_path = Path(tmp) / "data.csv"
        posterior.frame.to_csv(data_path, index=False)
        config = _config(posterior, family, data_path, seed, max_epochs)
        result = run_training(config, tracking_uri=tracking_uri, tags={"viops.conformance.posterior": posterior.name})
        client = MlflowClient(tracking_uri=result.tracking_uri)
        summary = json.loads(Path(client.download_artifacts(result.run_id, "posterior_summary.json", tmp)).read_text())
    rows = []
    for (block, index), (stan_name, draws) in posterior.reference.items():
        mean_vi, sd_vi = summary[block]["mean"][index], summary[block]["sd"][index]
        mean_ref, sd_ref = float(draws.mean()), float(draws.std(ddof=1))
        rows.append({"parameter": stan_name, "mean_vi": mean_vi, "mean_ref": mean_ref, "sd_vi": sd_vi,
                     "sd_ref": sd_ref, "mean_err_sd": (mean_vi - mean_ref) / sd_ref, "sd_ratio": sd_vi / sd_ref})
    errors = np.array([abs(r["mean_err_sd"]) for r in rows])
    ratios = np.array([r["sd_ratio"] for r in rows])
    return ConformanceResult(
        posterior=posterior.name, family=family, max_abs_mean_err_sd=float(errors.max()),
        min_sd_ratio=float(ratios.min()), max_sd_ratio=float(ratios.max()),
        psis_khat=float(result.metrics["psis_khat"]),
        sd_ratio_to_laplace_min=float(result.metrics["sd_ratio_to_laplace_min"]), run_id=result.run_id,
        seconds=float(result.metrics["train_seconds"]), parameters=rows,
    )


def run_conformance(root: str | Path, posteriors: list[str], families: list[str], *,
                    tracking_uri: str | None = None, seed: int = 0, progress=None) -> list[ConformanceResult]:
    """Fit every posterior with every family; ``progress(result)`` is called after each fit."""
    results = []
    for name in posteriors:
        posterior = load_posterior(root, name)
        for family in families:
            result = fit_reference(posterior, family, tracking_uri=tracking_uri, seed=seed)
            results.append(result)
            if progress is not None:
                progress(result)
    return results


def format_table(results: list[ConformanceResult]) -> str:
    """A Markdown table: one row per (posterior, family)."""
    lines = [
        "| posterior | family | max abs mean err (ref SD) | SD ratio min | SD ratio max | PSIS k-hat "
        "| min SD / Laplace SD | seconds |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r.posterior} | {r.family} | {r.max_abs_mean_err_sd:.3f} | {r.min_sd_ratio:.3f} | "
                     f"{r.max_sd_ratio:.3f} | {r.psis_khat:.2f} | {r.sd_ratio_to_laplace_min:.2f} | {r.seconds:.1f} |")
    return "\n".join(lines)
