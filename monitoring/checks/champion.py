"""The deployed version as the window checks see it: loaded once per ``viops monitor`` run.

:func:`load_champion` loads the version's pyfunc, the reference snapshot of its training features, its predictions
on that snapshot, and baselines measured on its own held-out split **with the same code** the checks then run on
windows, so a window and its baseline always share units and estimators.

The champion's permutation sensitivity (:mod:`monitoring.checks.sensitivity`, one predictive pass per feature) is a
function of the version alone, given the settings it is measured with, so a monitor with a state folder keeps it
there (``<model>-v<version>.sensitivity.json``) and the next window's run reads it back instead of measuring it
again; a different version, run, row count or seed measures it afresh.
"""

from __future__ import annotations

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

__all__ = ["Champion", "load_champion", "prediction_columns", "uncertainty_summary"]


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
    loaded = load_version(client, model_name, f"@{alias}", tracking_uri=tracking_uri)
    artifacts = loaded.artifacts(tracking_uri)  # its evidence checked against the version's signature
    reference = artifacts.reference_features()
    if reference is None:
        raise DataError(f"run {loaded.run_id} of {model_name} v{loaded.version} logged no reference snapshot "
                        f"({REFERENCE_FEATURES}); drift cannot be measured")
    reference = reference[list(loaded.bundle.features)].astype("float64")
    reference_predictions = loaded.pyfunc.predict(reference)
    champion = Champion(loaded, reference, reference_predictions.reset_index(drop=True))
    promoted = (client.get_model_version(model_name, loaded.version).tags or {}).get("viops.promote.at")
    if promoted:
        from datetime import datetime

        champion.promoted_at = datetime.fromisoformat(promoted).timestamp()
    champion.baseline_uncertainty = uncertainty_summary(champion.kind, reference_predictions)
    if checks.drift.enabled:
        champion.feature_weights = _feature_weights(champion, checks, state_dir)
    holdout = artifacts.holdout()
    if holdout is not None and len(holdout):
        champion.baseline = predictive_metrics(loaded.predictor, holdout, seed=checks.seed,
                                               num_samples=checks.calibration.predictive_samples)
    return champion


def _feature_weights(champion: Champion, checks: ChecksConfig, state_dir: Path | None) -> dict[str, float]:
    """The champion's feature weights: from ``state_dir`` when measured there before with the same settings."""
    loaded = champion.loaded
    key = {"model": loaded.name, "version": str(loaded.version), "run_id": loaded.run_id,
           "rows": checks.drift.sensitivity_rows, "seed": checks.seed, "features": champion.features}
    path = Path(state_dir) / f"{loaded.name}-v{loaded.version}.sensitivity.json" if state_dir else None
    try:
        saved = json.loads(path.read_text(encoding="utf-8")) if path is not None and path.is_file() else {}
        kept = saved["weights"] if saved["key"] == key else None
        if set(kept) == set(champion.features):
            return {name: float(kept[name]) for name in champion.features}
    except (OSError, ValueError, KeyError, TypeError):
        pass  # none kept, kept with other settings, or unreadable: measured again and replaced
    weights = feature_weights(loaded.pyfunc.predict, champion.reference, champion.kind,
                              rows=checks.drift.sensitivity_rows, seed=checks.seed)
    if path is not None:
        try:
            with replacing(path) as partial:  # two monitors of one model may write it at once
                partial.write_text(json.dumps({"key": key, "weights": weights}), encoding="utf-8")
        except OSError:
            pass  # a read-only state folder: the weights are measured again next time, nothing else changes
    return weights
