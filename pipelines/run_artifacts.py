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


#: What the gate and the monitor decide from besides the model: signed with each version registered from the run
#: (:mod:`pipelines.registry.signing`), and checked together before any of them is read.
EVIDENCE = (RESOLVED_CONFIG, REFERENCE_DIR, HOLDOUT_DIR)
_EVIDENCE_ROOTS = {path.split("/")[0] for path in EVIDENCE}


class RunArtifacts:
    """Read one run's artifacts from the tracking server at ``tracking_uri``.

    With ``verify`` (a callable that raises when a folder's files fail their signature), the :data:`EVIDENCE`
    artifacts are downloaded together on first use, checked, and read from that checked copy.
    """

    def __init__(self, tracking_uri: str, run_id: str, verify=None):
        self.tracking_uri, self.run_id = tracking_uri, run_id
        self._verify, self._checked = verify, None

    def download_evidence(self, dst: str | Path) -> Path:
        """Every :data:`EVIDENCE` artifact the run logged, under ``dst`` at its artifact path."""
        root = Path(dst)
        root.mkdir(parents=True, exist_ok=True)
        for path in EVIDENCE:
            try:
                self._fetch(path, root / Path(path).parent)
            except ArtifactMissing:
                continue  # e.g. no held-out split: the signature then lists no such file either
        return root

    def _checked_copy(self) -> Path:
        if self._checked is None:
            import tempfile

            folder = tempfile.TemporaryDirectory(prefix="viops-evidence-")  # removed with this object
            self._verify(self.download_evidence(folder.name))
            self._checked = folder
        return Path(self._checked.name)

    def download(self, path: str, dst: str | Path | None = None) -> Path:
        """The local copy of artifact ``path`` (into ``dst`` when given); from the checked copy for evidence.

        Raises:
            ArtifactMissing: the run did not log it.
            SignatureInvalid: with ``verify``, the evidence artifacts fail their signature.
        """
        if self._verify is None or path.split("/")[0] not in _EVIDENCE_ROOTS:
            return self._fetch(path, dst)
        local = self._checked_copy() / path
        if not local.exists():
            raise ArtifactMissing(f"run {self.run_id} has no artifact {path}")
        if dst is None:
            return local
        import shutil

        Path(dst).mkdir(parents=True, exist_ok=True)
        return Path(shutil.copy(local, Path(dst) / local.name))

    def _fetch(self, path: str, dst: str | Path | None = None) -> Path:
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
