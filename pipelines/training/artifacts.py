"""Log the artifacts of a finished training run (layout: :mod:`pipelines.run_artifacts`) and its pyfunc model."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from pipelines.config.schema import TrainConfig
from pipelines.run_artifacts import (
    CHECKPOINTS_DIR,
    HOLDOUT_DIR,
    HOLDOUT_FILE,
    LOGGED_MODEL,
    MODEL_ID_TAG,
    REFERENCE_DIR,
)
from pipelines.serving.bundle import PosteriorBundle
from pipelines.serving.pyfunc import PYFUNC_ENTRY_POINT, PosteriorPredictiveModel, pip_requirements, stage_pyfunc_code
from pipelines.training.data import PreparedData
from pipelines.training.plots import plot_elbo_curve

__all__ = ["log_training_artifacts", "MAX_SUMMARY_DIMS"]

#: ``posterior_summary.json`` is written for models with at most this many latent dimensions.
MAX_SUMMARY_DIMS = 10_000


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
    reference = art / REFERENCE_DIR
    reference.mkdir(exist_ok=True)
    data.train[list(data.features)].to_parquet(reference / "features.parquet", index=False)
    (reference / "manifest.json").write_text(json.dumps(data.manifest(), indent=2))
    client.log_artifacts(run_id, str(reference), REFERENCE_DIR)
    holdout_split = "test" if len(data.test) else "validation"
    holdout_frame = getattr(data, holdout_split)
    if len(holdout_frame):  # what `viops evaluate` scores candidate and champion on by default
        holdout = art / HOLDOUT_DIR
        holdout.mkdir(exist_ok=True)
        holdout_frame[[*data.features, data.target]].to_parquet(holdout / HOLDOUT_FILE, index=False)
        (holdout / "holdout.json").write_text(json.dumps({"split": holdout_split, "rows": len(holdout_frame),
                                                          "data_fingerprint": data.fingerprint}, indent=2))
        client.log_artifacts(run_id, str(holdout), HOLDOUT_DIR)
    ckpt = workdir / CHECKPOINTS_DIR / "last.ckpt"
    if ckpt.exists():
        client.log_artifact(run_id, str(ckpt), CHECKPOINTS_DIR)

    bundle = PosteriorBundle(
        model_config=config.model.model_dump(mode="json"),
        guide_config=config.guide.model_dump(mode="json"),
        family_state={k: v.detach().cpu() for k, v in (family or model).state_dict().items()},
        features=list(data.features),
        target=data.target,
        num_classes=getattr(model, "num_classes", None),
        predictive_samples=config.registry.predictive_samples,
        seed=config.train.seed,
        train_rows=data.train_rows,
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
                                params={"num_samples": config.registry.predictive_samples, "seed": config.train.seed,
                                        "device": "cpu"})
    with mlflow.start_run(run_id=run_id), tempfile.TemporaryDirectory(prefix="viops-pyfunc-code-") as code:
        info = mlflow.pyfunc.log_model(
            name=LOGGED_MODEL,
            python_model=str(PYFUNC_ENTRY_POINT),
            artifacts={"posterior": str(bundle_path)},
            code_paths=stage_pyfunc_code(Path(code)),
            signature=signature,
            input_example=example,
            pip_requirements=pip_requirements(),
        )
    client.set_tag(run_id, MODEL_ID_TAG, info.model_id)
    return bundle
