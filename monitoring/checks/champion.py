"""The deployed version as the window checks see it: loaded once per ``viops monitor`` run.

:func:`load_champion` loads the version's pyfunc, the reference snapshot of its training features, its predictions
on that snapshot, and baselines measured on its own held-out split **with the same code** the checks then run on
windows, so a window and its baseline always share units and estimators.

The champion's permutation sensitivity (:mod:`monitoring.checks.sensitivity`, one predictive pass per feature), its
predictions on the reference snapshot and its baselines on the held-out split are functions of the version alone,
given the settings they are measured with, so a monitor with a state folder keeps them there
(``<model>-v<version>.sensitivity.json``, ``<model>-v<version>.baseline.json``) and the next window's run reads them
back instead of measuring them again (and of downloading the held-out split); a different version, run, seed,
setting or viops release measures them afresh.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from monitoring.checks.config import ChecksConfig
from monitoring.checks.sensitivity import feature_weights
from pipelines.run_artifacts import REFERENCE_FEATURES
from pipelines.serving.loading import LoadedVersion, load_version
from pipelines.serving.predictive_metrics import predictive_metrics
from pipelines.tables import DataError, LabelledRows, usable_labelled_rows
from pipelines.workspace import replacing

__all__ = ["Champion", "load_champion", "prediction_columns", "uncertainty_summary", "MODEL_CACHE"]

#: The state folder's subfolder holding the model files of the versions a monitor loaded.
MODEL_CACHE = "models"


@dataclass
class Champion:
    """The deployed version and what windows are compared with."""

    loaded: LoadedVersion
    reference: pd.DataFrame  # training features (the run's reference snapshot)
    reference_predictions: pd.DataFrame
    baseline: dict[str, float] = field(default_factory=dict)  # fit and calibration on its held-out split
    baseline_uncertainty: dict[str, float] = field(default_factory=dict)
    promoted_at: float | None = None  # Unix time the version became champion (its `viops.promote.at` tag)
    feature_weights: dict[str, float] = field(default_factory=dict)  # share of its sensitivity, per feature

    @property
    def features(self) -> list[str]:
        return list(self.loaded.bundle.features)

    @property
    def target(self) -> str:
        return self.loaded.bundle.target

    @property
    def kind(self) -> str:
        """``regression``, ``classification`` or ``amortized``: the version's typed task."""
        return self.loaded.bundle.task.kind

    def labelled(self, frame: pd.DataFrame) -> LabelledRows | None:
        """``frame``'s rows this version can be scored against, by the shared rule (for a classifier, a label is
        a class index); None where labels cannot exist: no target column, or an amortized model."""
        if self.kind == "amortized" or self.target not in frame.columns:
            return None
        num_classes = self.loaded.bundle.num_classes if self.kind == "classification" else None
        return usable_labelled_rows(frame, self.features, self.target, num_classes=num_classes)


def prediction_columns(kind: str, predictions: pd.DataFrame) -> list[str]:
    """The prediction columns whose drift is watched: the predictive mean, class probabilities and entropy, or an
    amortized model's ``log_marginal``. The predictive SD is watched as a relative change instead
    (``vi_health.uncertainty``): it is nearly constant across rows, so a distance normed by its spread flags a 1%
    change."""
    if kind == "regression":
        return ["mean"]
    if kind == "classification":
        return [c for c in predictions.columns if c.startswith("p_")] + ["entropy"]
    return ["log_marginal"]


def uncertainty_summary(kind: str, predictions: pd.DataFrame) -> dict[str, float]:
    """Label-free uncertainty of a set of predictions (means over rows)."""
    if kind == "regression":
        return {"mean_predictive_sd": float(predictions["sd"].mean())}
    if kind == "classification":
        return {"mean_entropy": float(predictions["entropy"].mean()),
                "mean_mutual_information": float(predictions["mutual_information"].mean())}
    sds = predictions[[c for c in predictions.columns if c.startswith("z_sd_")]]
    return {"mean_log_marginal": float(predictions["log_marginal"].mean()), "mean_posterior_sd": float(sds.mean().mean())}


def load_champion(client, model_name: str, *, tracking_uri: str, alias: str = "champion",
                  checks: ChecksConfig | None = None, state_dir: Path | None = None) -> Champion:
    """Load the version behind ``alias`` with its reference snapshot, reference predictions and baselines; the
    feature weights are kept in, and read back from, ``state_dir`` when one is given.

    Raises:
        RegistryError: no such model or alias.
        DataError: the version's run logged no reference snapshot.
    """
    checks = checks or ChecksConfig()
    loaded = load_version(client, model_name, f"@{alias}", tracking_uri=tracking_uri,
                          cache_dir=Path(state_dir) / MODEL_CACHE if state_dir else None)
    artifacts = loaded.artifacts(tracking_uri)  # its evidence checked against the version's signature
    reference = artifacts.reference_features()
    if reference is None:
        raise DataError(f"run {loaded.run_id} of {model_name} v{loaded.version} logged no reference snapshot "
                        f"({REFERENCE_FEATURES}); drift cannot be measured")
    reference = reference[list(loaded.bundle.features)].astype("float64")
    key = {**_version_key(loaded), "seed": checks.seed, "samples": checks.calibration.predictive_samples,
           "reference_rows": len(reference)}
    kept = _read_kept(state_dir, loaded, "baseline", key)
    try:
        reference_predictions = pd.DataFrame(kept["reference_predictions"])
        baseline, baseline_uncertainty = dict(kept["baseline"]), dict(kept["baseline_uncertainty"])
        if len(reference_predictions) != len(reference):
            raise ValueError("kept for another reference")
    except (TypeError, KeyError, ValueError):  # none kept, or not usable: measured again and replaced
        reference_predictions = loaded.pyfunc.predict(reference).reset_index(drop=True)
        baseline_uncertainty = uncertainty_summary(loaded.bundle.task.kind, reference_predictions)
        holdout = artifacts.holdout()
        baseline = {} if holdout is None or not len(holdout) else predictive_metrics(
            loaded.predictor, holdout, seed=checks.seed, num_samples=checks.calibration.predictive_samples)
        _keep(state_dir, loaded, "baseline", key, {
            "reference_predictions": reference_predictions.to_dict(orient="list"), "baseline": baseline,
            "baseline_uncertainty": baseline_uncertainty})
    champion = Champion(loaded, reference, reference_predictions, baseline, baseline_uncertainty)
    promoted = (client.get_model_version(model_name, loaded.version).tags or {}).get("viops.promote.at")
    if promoted:
        from datetime import datetime

        champion.promoted_at = datetime.fromisoformat(promoted).timestamp()
    if checks.drift.enabled:
        champion.feature_weights = _feature_weights(champion, checks, state_dir)
    return champion


def _feature_weights(champion: Champion, checks: ChecksConfig, state_dir: Path | None) -> dict[str, float]:
    """The champion's feature weights: from ``state_dir`` when measured there before with the same settings."""
    loaded = champion.loaded
    key = {**_version_key(loaded), "rows": checks.drift.sensitivity_rows, "seed": checks.seed,
           "features": champion.features}
    kept = _read_kept(state_dir, loaded, "sensitivity", key)
    try:
        if set(kept) == set(champion.features):
            return {name: float(kept[name]) for name in champion.features}
    except (TypeError, ValueError):
        pass  # none kept, kept with other settings, or unreadable: measured again and replaced
    weights = feature_weights(loaded.pyfunc.predict, champion.reference, champion.kind,
                              rows=checks.drift.sensitivity_rows, seed=checks.seed)
    _keep(state_dir, loaded, "sensitivity", key, weights)
    return weights


def _version_key(loaded: LoadedVersion) -> dict:
    """What a kept measurement of a version depends on besides its settings: the version, its run, and the viops
    release that measured it (a release may measure differently)."""
    return {"model": loaded.name, "version": str(loaded.version), "run_id": loaded.run_id, "viops": _release()}


@functools.cache
def _release() -> str | None:
    """The installed viops release (read from its metadata once per process)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("viops")
    except PackageNotFoundError:
        return None


def _kept_path(state_dir: Path | None, loaded: LoadedVersion, what: str) -> Path | None:
    return Path(state_dir) / f"{loaded.name}-v{loaded.version}.{what}.json" if state_dir else None


def _read_kept(state_dir: Path | None, loaded: LoadedVersion, what: str, key: dict):
    """What a monitor kept in ``state_dir`` for this version under ``key``; None when nothing was, or it was kept
    under another key, or the file does not parse."""
    path = _kept_path(state_dir, loaded, what)
    try:
        saved = json.loads(path.read_text(encoding="utf-8")) if path is not None and path.is_file() else {}
        return saved["value"] if saved["key"] == key else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _keep(state_dir: Path | None, loaded: LoadedVersion, what: str, key: dict, value) -> None:
    path = _kept_path(state_dir, loaded, what)
    if path is None:
        return
    try:
        with replacing(path) as partial:  # two monitors of one model may write it at once
            partial.write_text(json.dumps({"key": key, "value": value}), encoding="utf-8")
    except (OSError, TypeError, ValueError):
        pass  # a read-only state folder (or a value JSON cannot hold): measured again next time, nothing else changes
