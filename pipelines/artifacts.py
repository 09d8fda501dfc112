"""Artifacts of a training run: posterior summary, ELBO curve, reference snapshot, checkpoint and the pyfunc model."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np

from pipelines.config import TrainConfig
from pipelines.data import PreparedData
from pipelines.pyfunc import PosteriorBundle, PosteriorPredictiveModel
from pipelines.registry import MODEL_ID_TAG

__all__ = [
    "log_training_artifacts", "plot_amortization_gaps", "plot_elbo_curve", "plot_pit_histogram", "plot_reliability_diagram", "MAX_SUMMARY_DIMS",
]

#: ``posterior_summary.json`` is written for models with at most this many latent dimensions.
MAX_SUMMARY_DIMS = 10_000
REPO_ROOT = Path(__file__).resolve().parent.parent
#: Where a training run keeps its held-out split (features and target) for the evaluation gate.
HOLDOUT_DIR = "evaluation"
HOLDOUT_FILE = "holdout.parquet"


@contextlib.contextmanager
def _figure(path: Path, title: str, xlabel: str, ylabel: str, legend_loc: str, size=(7, 4)):
    """A matplotlib axes (headless backend) that is labelled, saved to ``path`` and closed on exit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size, dpi=100)
    try:
        yield ax
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(loc=legend_loc)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)


def plot_elbo_curve(history: list[tuple[int, float]], path: Path, title: str) -> Path:
    """Per-step ELBO with a moving average, saved as PNG."""
    with _figure(path, title, "step", "ELBO (nats, full-data estimate)", "lower right") as ax:
        if history:
            steps, values = np.array(history).T
            ax.plot(steps, values, lw=0.6, alpha=0.4, label="ELBO (per step)")
            window = max(1, len(values) // 50)
            if window > 1:
                smooth = np.convolve(values, np.ones(window) / window, mode="valid")
                ax.plot(steps[window - 1 :], smooth, lw=1.5, label=f"moving average ({window} steps)")
            lo, hi = np.percentile(values, [5, 100])
            ax.set_ylim(lo - 0.05 * abs(hi - lo), hi + 0.05 * abs(hi - lo))
    return path


def plot_pit_histogram(pit: np.ndarray, path: Path, title: str, bins: int = 20) -> Path:
    """Histogram of PIT values with the uniform density a calibrated predictive would give, saved as PNG.

    A U shape means over-confident predictive intervals, a hump under-confident ones, a slope a biased mean.
    """
    with _figure(path, title, "PIT = predictive CDF at the observed y", "density", "lower center", (6, 4)) as ax:
        ax.hist(pit, bins=bins, range=(0.0, 1.0), density=True, alpha=0.7, label=f"{len(pit)} held-out rows")
        ax.axhline(1.0, color="black", lw=1.0, ls="--", label="calibrated (uniform)")
    return path


def plot_reliability_diagram(calibration, path: Path, title: str) -> Path:
    """Accuracy against confidence per bin (the reliability diagram), with the diagonal of perfect calibration.

    Bars below the diagonal: over-confident predictions; above: under-confident ones.
    """
    bins = len(calibration.bin_count)
    edges = np.linspace(0.0, 1.0, bins + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    filled = calibration.bin_count.numpy() > 0
    with _figure(path, f"{title} (ECE {calibration.ece:.3f})", "confidence (top-class probability)", "accuracy",
                 "upper left", (5, 5)) as ax:
        ax.bar(centres[filled], calibration.bin_accuracy.numpy()[filled], width=1.0 / bins, alpha=0.7,
               edgecolor="black", label="accuracy in bin")
        ax.plot(calibration.bin_confidence.numpy()[filled], calibration.bin_accuracy.numpy()[filled], "o", ms=3,
                color="C3", label="mean confidence in bin")
        ax.plot([0, 1], [0, 1], color="black", lw=1.0, ls="--", label="calibrated")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    return path


def plot_amortization_gaps(history: list[tuple[int, dict[str, float]]], path: Path, title: str) -> Path:
    """The amortization and approximation gaps over training (nats per datum), saved as PNG."""
    with _figure(path, title, "step", "gap (nats per datum)", "upper right") as ax:
        steps = [step for step, _ in history]
        for key, label in (("amortization/amortization_gap", "amortization gap  L[q*] - L[q]"),
                           ("amortization/approximation_gap", "approximation gap  log p(x) - L[q*]")):
            ax.plot(steps, [values[key] for _, values in history], marker="o", ms=3, label=label)
        ax.axhline(0.0, color="black", lw=0.8)
    return path


def log_training_artifacts(client, run_id, config: TrainConfig, data: PreparedData, model, family, stats, history,
                           workdir: Path) -> PosteriorBundle:
    """Log every artifact of a finished run and the pyfunc model; tags the run with the logged model's id."""
    import mlflow
    from mlflow.models import infer_signature

    art = workdir / "artifacts"
    art.mkdir(parents=True, exist_ok=True)
    if family is not None and model.latent_dim <= MAX_SUMMARY_DIMS:
        summary = model.posterior_summary(family)
        (art / "posterior_summary.json").write_text(json.dumps(summary, indent=2))
        client.log_artifact(run_id, str(art / "posterior_summary.json"))
    client.log_artifact(run_id, str(plot_elbo_curve(history, art / "elbo_curve.png", f"{config.name}: ELBO")))
    reference = art / "reference"
    reference.mkdir(exist_ok=True)
    data.train[list(data.features)].to_parquet(reference / "features.parquet", index=False)
    (reference / "manifest.json").write_text(json.dumps(data.manifest(), indent=2))
    client.log_artifacts(run_id, str(reference), "reference")
    holdout_split = "test" if len(data.test) else "validation"
    holdout_frame = getattr(data, holdout_split)
    if len(holdout_frame):  # what `viops evaluate` scores candidate and champion on by default
        holdout = art / "evaluation"
        holdout.mkdir(exist_ok=True)
        holdout_frame[[*data.features, data.target]].to_parquet(holdout / HOLDOUT_FILE, index=False)
        (holdout / "holdout.json").write_text(json.dumps({"split": holdout_split, "rows": len(holdout_frame),
                                                          "data_fingerprint": data.fingerprint}, indent=2))
        client.log_artifacts(run_id, str(holdout), HOLDOUT_DIR)
    ckpt = workdir / "checkpoints" / "last.ckpt"
    if ckpt.exists():
        client.log_artifact(run_id, str(ckpt), "checkpoints")

    bundle = PosteriorBundle(
        model_config=config.model.model_dump(mode="json"),
        guide_config=config.guide.model_dump(mode="json"),
        family_state={k: v.detach().cpu() for k, v in (family or model).state_dict().items()},
        features=list(data.features),
        target=data.target,
        num_classes=getattr(model, "num_classes", None),
        predictive_samples=config.registry.predictive_samples,
        seed=config.train.seed,
        train_rows=len(data.train),
    )
    if stats is not None:
        bundle.feature_mean = [float(v) for v in stats["feature_mean"]]
        bundle.feature_scale = [float(v) for v in stats["feature_scale"]]
        bundle.target_mean, bundle.target_scale = stats["target_mean"], stats["target_scale"]
        (art / "standardization.json").write_text(
            json.dumps({"features": bundle.features, "feature_mean": bundle.feature_mean,
                        "feature_scale": bundle.feature_scale, "target_mean": bundle.target_mean,
                        "target_scale": bundle.target_scale}, indent=2)
        )
        client.log_artifact(run_id, str(art / "standardization.json"))
    bundle_path = bundle.save(art / "posterior.pt")

    example = data.train[list(data.features)].head(5).reset_index(drop=True)
    predictor = PosteriorPredictiveModel()
    predictor.bundle = bundle
    predictor.model, predictor.family = bundle.rebuild()
    output = predictor.predict(None, example)
    signature = infer_signature(example, output,
                                params={"num_samples": config.registry.predictive_samples, "seed": config.train.seed})
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(Path(__file__).with_name("pyfunc_model.py")),
            artifacts={"posterior": str(bundle_path)},
            code_paths=[str(REPO_ROOT / "models"), str(REPO_ROOT / "pipelines")],
            signature=signature,
            input_example=example,
            pip_requirements=_pip_requirements(),
        )
    client.set_tag(run_id, MODEL_ID_TAG, info.model_id)
    return bundle


def _pip_requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("torch", "mlflow", "pandas", "numpy", "pydantic", "PyYAML")]
