"""The checks ``viops monitor`` runs on one production window against the champion, one function each.

:func:`load_champion` gathers, once per run, what every check compares with. It loads the champion's pyfunc, the
reference snapshot of its training features, its predictions on that snapshot, and baselines measured on its own
held-out split **with the same code** the checks then run on windows, so a window and its baseline always share
units and estimators.

- :func:`check_inputs` counts missing and non-finite values per feature. Only finite rows are scored.
- :func:`check_drift` runs Evidently on the features and on the predictions (:mod:`monitoring.drift`).
- :func:`check_calibration` runs on labelled rows. Regression: 90%-interval coverage and PIT uniformity (K-S
  distance). Classifiers: ECE and Brier. Each also reports its change from the baseline.
- :func:`check_vi_health` compares the champion's ELBO per datum and predictive NLL on the window with the baseline
  (labelled rows only), together with a label-free uncertainty shift and single-row scoring latency. Regression
  uses the mean predictive SD; classifiers use mean entropy and epistemic mutual information. Amortized models add
  the amortization gap on a subsample.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from monitoring.config import CalibrationCheckConfig, ChecksConfig, DriftCheckConfig, VIHealthConfig
from monitoring.drift import DriftResult, drift_check
from pipelines.data import DataError
from pipelines.evaluation import predictive_metrics
from pipelines.scoring import LoadedVersion, load_version

__all__ = ["Champion", "load_champion", "check_inputs", "check_drift", "check_calibration", "check_vi_health",
           "prediction_columns", "uncertainty_summary"]


@dataclass
class Champion:
    """The deployed version and what windows are compared with."""

    loaded: LoadedVersion
    reference: pd.DataFrame  # training features (the run's reference snapshot)
    reference_predictions: pd.DataFrame
    baseline: dict[str, float] = field(default_factory=dict)  # fit and calibration on its held-out split
    baseline_uncertainty: dict[str, float] = field(default_factory=dict)
    promoted_at: float | None = None  # Unix time the version became champion (its `viops.promote.at` tag)

    @property
    def features(self) -> list[str]:
        return list(self.loaded.bundle.features)

    @property
    def target(self) -> str:
        return self.loaded.bundle.target

    @property
    def kind(self) -> str:
        b = self.loaded.bundle
        return "amortized" if self.loaded.predictor.family is None else (
            "classification" if b.num_classes is not None else "regression")


def prediction_columns(kind: str, predictions: pd.DataFrame) -> list[str]:
    """The prediction columns whose drift is watched: the predictive mean and SD, class probabilities and entropy,
    or an amortized model's ``log_marginal``."""
    if kind == "regression":
        return ["mean", "sd"]
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
                  checks: ChecksConfig | None = None) -> Champion:
    """Load the version behind ``alias`` with its reference snapshot, reference predictions and baselines.

    Raises:
        RegistryError: no such model or alias.
        DataError: the version's run logged no reference snapshot.
    """
    import mlflow

    from pipelines.artifacts import HOLDOUT_DIR, HOLDOUT_FILE

    checks = checks or ChecksConfig()
    loaded = load_version(client, model_name, f"@{alias}", tracking_uri=tracking_uri)

    def artifact(path: str) -> pd.DataFrame | None:
        try:
            return pd.read_parquet(mlflow.artifacts.download_artifacts(run_id=loaded.run_id, artifact_path=path,
                                                                       tracking_uri=tracking_uri))
        except Exception:  # noqa: BLE001 - missing artifact; MLflow's exception type depends on the store
            return None

    reference = artifact("reference/features.parquet")
    if reference is None:
        raise DataError(f"run {loaded.run_id} of {model_name} v{loaded.version} logged no reference snapshot "
                        f"(reference/features.parquet); drift cannot be measured")
    reference = reference[list(loaded.bundle.features)].astype("float64")
    reference_predictions = loaded.pyfunc.predict(reference)
    champion = Champion(loaded, reference, reference_predictions.reset_index(drop=True))
    promoted = (client.get_model_version(model_name, loaded.version).tags or {}).get("viops.promote.at")
    if promoted:
        from datetime import datetime

        champion.promoted_at = datetime.fromisoformat(promoted).timestamp()
    champion.baseline_uncertainty = uncertainty_summary(champion.kind, reference_predictions)
    holdout = artifact(f"{HOLDOUT_DIR}/{HOLDOUT_FILE}")
    if holdout is not None and len(holdout):
        champion.baseline = predictive_metrics(loaded.predictor, holdout, seed=checks.seed,
                                               num_samples=checks.calibration.predictive_samples)
    return champion


def check_inputs(frame: pd.DataFrame, champion: Champion) -> tuple[dict, np.ndarray]:
    """Missing columns are an error; NaN/inf values are counted. Returns ``(summary, mask of finite rows)``."""
    missing = [c for c in champion.features if c not in frame.columns]
    if missing:
        raise DataError(f"window lacks feature column(s) {missing} of {champion.loaded.ref}; it has "
                        f"{list(frame.columns)}")
    values = frame[champion.features].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(values)
    finite_rows = ~bad.any(axis=1)
    per_column = {c: int(n) for c, n in zip(champion.features, bad.sum(axis=0)) if n}
    return {"rows": int(len(frame)), "finite_rows": int(finite_rows.sum()), "nonfinite_values": int(bad.sum()),
            "nonfinite_fraction": float(bad.any(axis=1).mean()) if len(frame) else 0.0,
            "nonfinite_by_column": per_column}, finite_rows


def check_drift(features: pd.DataFrame, predictions: pd.DataFrame | None, champion: Champion,
                cfg: DriftCheckConfig, seed: int = 0) -> tuple[dict, DriftResult | None]:
    """Evidently drift of the (finite) features and of the predictions; returns ``(summary, feature result)``."""
    options = dict(row_cap=cfg.row_cap, drift_share=cfg.drift_share, method=cfg.method, threshold=cfg.threshold,
                   seed=seed)
    result = drift_check(champion.reference, features, champion.features, **options)
    summary = {**result.to_json(), "seconds": result.seconds}
    if cfg.predictions and predictions is not None and len(predictions):
        columns = prediction_columns(champion.kind, predictions)
        on_predictions = drift_check(champion.reference_predictions, predictions, columns, **options)
        summary["predictions"] = on_predictions.to_json()
        summary["seconds"] += on_predictions.seconds
    return summary, result


def check_calibration(labelled: pd.DataFrame, champion: Champion, cfg: CalibrationCheckConfig,
                      seed: int = 0) -> dict:
    """Calibration of the champion on labelled finite rows, and its change from the held-out baseline."""
    if champion.kind == "amortized":
        return {"status": "not applicable: an amortized model predicts no labels"}
    if len(labelled) < cfg.min_rows:
        return {"status": f"not enough labels: {len(labelled)} labelled rows, need {cfg.min_rows}",
                "labelled_rows": len(labelled)}
    metrics = predictive_metrics(champion.loaded.predictor, labelled, num_samples=cfg.predictive_samples, seed=seed)
    keys = ("ece", "brier", "accuracy") if champion.kind == "classification" else ("coverage_90", "coverage_50",
                                                                                   "pit_ks")
    out = {"status": "measured", "labelled_rows": len(labelled), **{k: metrics[k] for k in keys}}
    out["delta"] = {k: metrics[k] - champion.baseline[k] for k in keys if k in champion.baseline}
    return out


def check_vi_health(inputs: dict, labelled: pd.DataFrame | None, predictions: pd.DataFrame, champion: Champion,
                    cfg: VIHealthConfig, seed: int = 0, features: pd.DataFrame | None = None) -> dict:
    """ELBO and NLL vs baseline (labelled rows), NaN/inf inputs, uncertainty shift, latency, amortization gap."""
    out: dict = {"nonfinite_values": inputs["nonfinite_values"], "nonfinite_fraction": inputs["nonfinite_fraction"]}
    labels_known = labelled is not None and len(labelled) > 0
    if champion.kind == "amortized" and features is not None and len(features):
        labelled, labels_known = features, True  # the VAE's "label" is x itself
    if labels_known:
        metrics = predictive_metrics(champion.loaded.predictor, labelled, num_samples=cfg.predictive_samples,
                                     seed=seed)
        for key in ("elbo_per_datum", "nll"):
            if key in metrics:
                out[key] = metrics[key]
                if key in champion.baseline:
                    out[f"{key}_baseline"] = champion.baseline[key]
                    out[f"{key}_delta"] = metrics[key] - champion.baseline[key]
    if len(predictions):
        now = uncertainty_summary(champion.kind, predictions)
        out["uncertainty"] = {k: {"window": v, "baseline": champion.baseline_uncertainty[k],
                                  "ratio": v / champion.baseline_uncertainty[k]
                                  if champion.baseline_uncertainty[k] else None} for k, v in now.items()}
    if champion.kind == "amortized" and features is not None and len(features):
        import torch

        from models.amortized import amortization_gaps, collapse_statistics
        from pipelines.evaluation import bundle_tensors

        model = champion.loaded.predictor.model
        x, _ = bundle_tensors(champion.loaded.bundle, features.head(cfg.amortization_subsample))
        with torch.random.fork_rng(devices=[]):
            gaps = amortization_gaps(model, x, seed=seed)
        out["amortization_gap"] = gaps.amortization_gap
        collapse = collapse_statistics(model, bundle_tensors(champion.loaded.bundle, features)[0])
        out["active_units"] = collapse.active_units
        out["active_unit_ratio"] = collapse.active_units / model.latent_dim
    if features is not None and len(features):
        times = []
        rows = features.head(cfg.latency_requests + 1)
        champion.loaded.pyfunc.predict(rows.iloc[[0]])  # warm-up
        for i in range(1, len(rows)):
            began = time.perf_counter()
            champion.loaded.pyfunc.predict(rows.iloc[[i]])
            times.append((time.perf_counter() - began) * 1000.0)
        if times:
            out["latency_p95_ms"] = float(np.percentile(times, 95))
    return out
