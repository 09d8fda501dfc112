"""The MLflow pyfunc flavour of a trained viops model: posterior predictive mean, SD and 5%/95% quantiles.

The artifact ``posterior.pt`` holds the model and guide config, the variational parameters, the feature order and the
standardisation of the training data, so that ``mlflow.pyfunc.load_model`` (and ``mlflow models serve``) rebuilds
the exact posterior. Predictions are reproducible: draws use a seeded generator.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch

__all__ = ["PosteriorBundle", "PosteriorPredictiveModel", "PREDICTION_COLUMNS"]

PREDICTION_COLUMNS = ("mean", "sd", "q05", "q95")


@dataclass
class PosteriorBundle:
    """Everything needed to rebuild the fitted posterior outside the training process."""

    model_config: dict
    guide_config: dict
    family_state: dict
    features: list[str]
    target: str
    feature_mean: list[float] = field(default_factory=list)
    feature_scale: list[float] = field(default_factory=list)
    target_mean: float = 0.0
    target_scale: float = 1.0
    predictive_samples: int = 500
    seed: int = 0

    def save(self, path: str | Path) -> Path:
        torch.save(asdict(self), path)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> PosteriorBundle:
        return cls(**torch.load(path, map_location="cpu", weights_only=True))

    def rebuild(self):
        """Return ``(model, family)`` with the fitted variational parameters loaded."""
        from pipelines.build import build_family, build_model
        from pipelines.config import GuideConfig, ModelConfig

        model = build_model(ModelConfig.model_validate(self.model_config), len(self.features))
        family = build_family(GuideConfig.model_validate(self.guide_config), model.latent_dim)
        family.load_state_dict(self.family_state)
        family.eval()
        return model, family


class PosteriorPredictiveModel(mlflow.pyfunc.PythonModel):
    """``predict(DataFrame of features) -> DataFrame[mean, sd, q05, q95]`` on the original target scale."""

    def load_context(self, context) -> None:
        self.bundle = PosteriorBundle.load(context.artifacts["posterior"])
        self.model, self.family = self.bundle.rebuild()

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from models.predictive import posterior_predictive

        b = self.bundle
        missing = [c for c in b.features if c not in model_input.columns]
        if missing:
            raise ValueError(f"input is missing feature column(s) {missing}; the model expects {b.features}")
        x = model_input[b.features].to_numpy(dtype=np.float32)
        if not np.isfinite(x).all():
            rows, cols = np.nonzero(~np.isfinite(x))
            raise ValueError(f"input has NaN/inf values, first in column {b.features[cols[0]]!r} at row {rows[0]}")
        if b.feature_mean:
            x = (x - np.asarray(b.feature_mean, dtype=np.float32)) / np.asarray(b.feature_scale, dtype=np.float32)
        num_samples = int((params or {}).get("num_samples", b.predictive_samples))
        generator = torch.Generator().manual_seed(int((params or {}).get("seed", b.seed)))
        summary = posterior_predictive(
            self.model, self.family, torch.from_numpy(x), num_samples=num_samples, generator=generator
        )
        columns = [summary.mean, summary.sd, summary.quantiles[0.05], summary.quantiles[0.95]]
        out = {name: col.numpy().astype(np.float64) for name, col in zip(PREDICTION_COLUMNS, columns)}
        for name in ("mean", "q05", "q95"):
            out[name] = out[name] * b.target_scale + b.target_mean
        out["sd"] = out["sd"] * b.target_scale
        return pd.DataFrame(out, index=model_input.index)
