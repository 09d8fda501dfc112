"""The artifacts of a training run: every path in one place, and typed readers for what other steps read back.

Training writes them (:mod:`pipelines.training.artifacts`); the gate, retraining and monitoring read them through
:class:`RunArtifacts`, so a path is spelled once and a resolved config comes back as the pydantic model, not a dict.

Layout of a run's artifacts::

    config/resolved_config.yaml     the validated config, defaults filled in (re-read as TrainConfig)
    reference/features.parquet      training features: the drift reference
    reference/manifest.json         the prepared data's manifest (rows per split, fingerprint, source)
    evaluation/holdout.parquet      the held-out split (features and target) the gate scores versions on
    evaluation/holdout.json         which split it is, rows, fingerprint
    posterior_summary.json          per-parameter mean/SD (models with at most MAX_SUMMARY_DIMS latents)
    standardization.json            feature and target means/SDs (when data.standardize)
    elbo_curve.png, diagnostics/    plots
    checkpoints/last.ckpt           the Lightning checkpoint at the end of training

The run's logged model (``LOGGED_MODEL``, whose id the run is tagged with) holds the posterior bundle
``posterior.pt`` and the code it needs (:mod:`pipelines.serving.pyfunc`).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from pipelines.config.schema import GateConfig, TrainConfig

__all__ = [
    "RunArtifacts", "ArtifactMissing", "write_resolved_config", "RESOLVED_CONFIG", "REFERENCE_DIR",
    "REFERENCE_FEATURES", "HOLDOUT_DIR", "HOLDOUT_FILE", "HOLDOUT", "CHECKPOINTS_DIR", "DIAGNOSTICS_DIR",
    "LOGGED_MODEL", "MODEL_ID_TAG",
]

RESOLVED_CONFIG = "config/resolved_config.yaml"
REFERENCE_DIR = "reference"
REFERENCE_FEATURES = f"{REFERENCE_DIR}/features.parquet"
HOLDOUT_DIR = "evaluation"
HOLDOUT_FILE = "holdout.parquet"
HOLDOUT = f"{HOLDOUT_DIR}/{HOLDOUT_FILE}"
CHECKPOINTS_DIR = "checkpoints"
DIAGNOSTICS_DIR = "diagnostics"
#: The name of the pyfunc model logged with the run (``mlflow.pyfunc.log_model(name=...)``).
LOGGED_MODEL = "model"
#: The run tag holding the id of that logged model (what registration points the version at).
MODEL_ID_TAG = "viops.model_id"


class ArtifactMissing(LookupError):
    """The run has no such artifact (it predates it, or failed before logging it)."""


def write_resolved_config(client, run_id: str, config: TrainConfig) -> None:
    """Log the validated config with its defaults filled in, where :meth:`RunArtifacts.resolved_config` reads it."""
    client.log_text(run_id, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), RESOLVED_CONFIG)


class RunArtifacts:
    """Read one run's artifacts from the tracking server at ``tracking_uri``."""

    def __init__(self, tracking_uri: str, run_id: str):
        self.tracking_uri, self.run_id = tracking_uri, run_id

    def download(self, path: str, dst: str | Path | None = None) -> Path:
        """The local copy of artifact ``path`` (into ``dst`` when given).

        Raises:
            ArtifactMissing: the run did not log it.
        """
        import mlflow

        try:
            local = mlflow.artifacts.download_artifacts(run_id=self.run_id, artifact_path=path,
                                                        tracking_uri=self.tracking_uri,
                                                        dst_path=None if dst is None else str(dst))
        except Exception as exc:  # noqa: BLE001 - MLflow raises a different type for a missing artifact per store
            from pipelines.tracking import infrastructure_error

            if infrastructure_error(exc, self.tracking_uri) is not None:
                raise  # the server or the disk failed: not a missing artifact
            raise ArtifactMissing(f"run {self.run_id} has no artifact {path}: {exc}") from None
        return Path(local)

    def resolved_config(self) -> TrainConfig:
        """The config the run was trained with, validated again (``data.path`` is absolute in it)."""
        raw = yaml.safe_load(self.download(RESOLVED_CONFIG).read_text()) or {}
        return TrainConfig.model_validate(raw)

    def gate_config(self) -> GateConfig:
        """The gate thresholds of the run's config; the documented defaults for a run that logged no config."""
        try:
            raw = yaml.safe_load(self.download(RESOLVED_CONFIG).read_text()) or {}
        except ArtifactMissing:
            return GateConfig()
        return GateConfig.model_validate(raw.get("gate") or {})

    def _frame(self, path: str) -> pd.DataFrame | None:
        try:
            return pd.read_parquet(self.download(path))
        except ArtifactMissing:
            return None

    def holdout(self) -> pd.DataFrame | None:
        """The held-out split (features and target), or None when the run had no held-out rows."""
        return self._frame(HOLDOUT)

    def reference_features(self) -> pd.DataFrame | None:
        """The training features (the drift reference), or None for a run that logged none."""
        return self._frame(REFERENCE_FEATURES)
