"""The evaluation gate: score a candidate version and the champion on the same held-out data, apply thresholds.

``viops evaluate --model NAME`` loads both versions from the registry (the candidate defaults to ``@challenger``),
scores them on the candidate's held-out split (logged by training as ``evaluation/holdout.parquet``) or on a given
window, and checks the candidate against the thresholds of its config's ``gate:`` section (docs/lifecycle.md):

- predictive NLL (nats per datum, on the original target scale) not worse than the champion's by more than
  ``nll_tolerance``; with no champion this comparison is skipped and only the absolute thresholds apply;
- calibration: ECE (classifiers) at most ``max_ece``; 90%-interval coverage (regression) inside ``coverage_90``;
- PSIS k-hat of the fit (the training run's ``final/psis_khat``) at most ``max_psis_khat`` where the model has one;
- no NaN/inf in the candidate's predictions; p95 latency of single-row ``predict`` calls within the bound.

The verdict ``{passed, reasons[], metrics{candidate, champion}}`` is logged as a run of the ``viops-evaluation``
experiment and tagged on the candidate version (``viops.gate.*``), where ``viops promote`` reads it. Bad input
(missing columns, NaN, labels the model cannot have) is an error before anything is logged or tagged.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from pipelines.audit import utc_now
from pipelines.config import GateConfig
from pipelines.data import DataError, read_table
from pipelines.registry import CHALLENGER, CHAMPION, alias_version
from pipelines.scoring import LoadedVersion, load_version, validate_input

__all__ = ["EVALUATION_EXPERIMENT", "Verdict", "evaluate", "version_metrics"]

EVALUATION_EXPERIMENT = "viops-evaluation"


@dataclass
class Verdict:
    """The gate's decision on a candidate version.

    Attributes:
        passed: every applicable threshold holds.
        reasons: one sentence per failed threshold (empty when passed).
        metrics: ``{"candidate": {...}, "champion": {...} or None}``, computed on the same rows.
        checks: ``{check: "pass" | "fail" | "skipped: why"}`` for every threshold.
    """

    passed: bool
    reasons: list[str]
    metrics: dict
    checks: dict[str, str]
    model: str
    candidate_version: str
    champion_version: str | None
    data: dict
    thresholds: dict
    evaluation_run_id: str | None = None
    time: str = field(default_factory=utc_now)

    def to_json(self) -> dict:
        return {
            "passed": self.passed, "reasons": self.reasons, "metrics": self.metrics, "checks": self.checks,
            "model": self.model, "candidate_version": self.candidate_version,
            "champion_version": self.champion_version, "data": self.data, "thresholds": self.thresholds,
            "evaluation_run_id": self.evaluation_run_id, "time": self.time,
        }

    def summary(self) -> str:
        against = f"champion version {self.champion_version}" if self.champion_version else "no champion"
        head = (f"{self.model} version {self.candidate_version} vs {against} on {self.data['rows']} rows of "
                f"{self.data['source']}: {'PASSED' if self.passed else 'REJECTED'}")
        lines = [head]
        for who in ("candidate", "champion"):
            values = self.metrics.get(who)
            if values:
                shown = ", ".join(f"{k} {v:.4g}" for k, v in values.items() if isinstance(v, float))
                lines.append(f"  {who}: {shown}")
        lines += [f"  - {reason}" for reason in self.reasons]
        return "\n".join(lines)


# --- thresholds and data ------------------------------------------------------------------------------------------


def _run_gate_config(client, run_id: str, tracking_uri: str) -> GateConfig:
    """The gate thresholds of the config a version was trained with (defaults for runs that predate them)."""
    import mlflow

    try:
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="config/resolved_config.yaml",
                                                   tracking_uri=tracking_uri)
    except Exception:  # noqa: BLE001 - a run without its config: fall back to the documented defaults
        return GateConfig()
    raw = yaml.safe_load(Path(path).read_text()) or {}
    return GateConfig.model_validate(raw.get("gate") or {})


def _holdout(candidate: LoadedVersion, tracking_uri: str) -> tuple[pd.DataFrame, str]:
    import mlflow

    from pipelines.artifacts import HOLDOUT_DIR, HOLDOUT_FILE

    try:
        path = mlflow.artifacts.download_artifacts(run_id=candidate.run_id, artifact_path=f"{HOLDOUT_DIR}/{HOLDOUT_FILE}",
                                                   tracking_uri=tracking_uri)
    except Exception:  # noqa: BLE001 - MLflow raises different types for a missing artifact per store
        raise DataError(f"run {candidate.run_id} of version {candidate.version} logged no held-out split "
                        f"({HOLDOUT_DIR}/{HOLDOUT_FILE}); pass --data FILE with features and target") from None
    return pd.read_parquet(path), f"held-out split of run {candidate.run_id}"


def _check_labels(frame: pd.DataFrame, loaded: LoadedVersion, source: str) -> None:
    bundle = loaded.bundle
    if bundle.num_classes is None:
        return
    labels = frame[bundle.target].to_numpy()
    bad = (labels != np.round(labels)) | (labels < 0) | (labels >= bundle.num_classes)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(f"data {source}: target column {bundle.target!r} must hold class indices 0..{bundle.num_classes - 1} "
                        f"for version {loaded.version} of {loaded.name}; found {labels[row]!r} at row {row}")


def _check_counts(frame: pd.DataFrame, loaded: LoadedVersion, source: str) -> None:
    bundle = loaded.bundle
    if bundle.model_config.get("kind") != "vae":
        return
    total = bundle.model_config.get("total_count", 16) if bundle.model_config.get("likelihood") == "binomial" else 1
    values = frame[bundle.features].to_numpy()
    bad = (values < 0) | (values > total) | (values != np.round(values))
    if bad.any():
        row, col = (int(i[0]) for i in np.nonzero(bad))
        raise DataError(f"data {source}: column {bundle.features[col]!r} must hold counts 0..{total}; "
                        f"found {values[row, col]!r} at row {row}")


# --- metrics ------------------------------------------------------------------------------------------------------


def _latency_ms(loaded: LoadedVersion, features: pd.DataFrame, requests: int) -> np.ndarray:
    """Wall time of ``requests`` single-row ``predict`` calls through the pyfunc (schema enforcement included)."""
    rows = [features.iloc[[i % len(features)]] for i in range(requests + 1)]
    loaded.pyfunc.predict(rows[0])  # warm-up: first-call allocations are not a property of the model
    times = []
    for row in rows[1:]:
        began = time.perf_counter()
        loaded.pyfunc.predict(row)
        times.append((time.perf_counter() - began) * 1000.0)
    return np.asarray(times)


def version_metrics(loaded: LoadedVersion, frame: pd.DataFrame, gate: GateConfig, psis_khat: float | None) -> dict:
    """Predictive NLL, calibration, NaN count and single-row latency of one version on ``frame`` (validated)."""
    from pipelines.evaluation import predictive_metrics

    b = loaded.bundle
    out = predictive_metrics(loaded.predictor, frame, num_samples=gate.predictive_samples, seed=gate.seed)
    features = frame[b.features]
    predictions = loaded.pyfunc.predict(features)
    numeric = predictions.select_dtypes("number").to_numpy(dtype=float)
    out["nan_count"] = float((~np.isfinite(numeric)).sum())
    latency = _latency_ms(loaded, features, gate.latency_requests)
    out["latency_p50_ms"] = float(np.percentile(latency, 50))
    out["latency_p95_ms"] = float(np.percentile(latency, 95))
    if psis_khat is not None:
        out["psis_khat"] = float(psis_khat)
    return out


def _checks(cand: dict, champ: dict | None, champion_version: str | None, gate: GateConfig
            ) -> tuple[dict[str, str], list[str]]:
    checks: dict[str, str] = {}
    reasons: list[str] = []

    def check(name: str, ok: bool, reason: str) -> None:
        checks[name] = "pass" if ok else "fail"
        if not ok:
            reasons.append(reason)

    check("no_nan", cand["nan_count"] == 0 and math.isfinite(cand["nll"]),
          f"predictions contain {cand['nan_count']:.0f} NaN/inf values" if cand["nan_count"]
          else "predictive NLL is not finite")
    if champ is None:
        checks["nll_vs_champion"] = "skipped: no champion (first model)"
    else:
        worse = cand["nll"] - champ["nll"]
        check("nll_vs_champion", worse <= gate.nll_tolerance,
              f"predictive NLL {cand['nll']:.4f} is worse than champion version {champion_version}'s "
              f"{champ['nll']:.4f} by {worse:.4f} nats/datum (nll_tolerance {gate.nll_tolerance})")
    if gate.max_nll is None:
        checks["max_nll"] = "skipped: no max_nll set"
    else:
        check("max_nll", cand["nll"] <= gate.max_nll,
              f"predictive NLL {cand['nll']:.4f} is above max_nll {gate.max_nll}")
    if "ece" in cand:
        check("ece", cand["ece"] <= gate.max_ece, f"ECE {cand['ece']:.4f} is above max_ece {gate.max_ece}")
    else:
        checks["ece"] = "skipped: not a classifier"
    if "coverage_90" in cand:
        low, high = gate.coverage_90
        check("coverage_90", low <= cand["coverage_90"] <= high,
              f"coverage of the 90% predictive interval {cand['coverage_90']:.3f} is outside coverage_90 "
              f"[{low}, {high}]")
    else:
        checks["coverage_90"] = "skipped: not a regression model"
    if "psis_khat" not in cand:
        checks["psis_khat"] = "skipped: not defined for this model (no global latents)"
    elif gate.max_psis_khat is None:
        checks["psis_khat"] = "skipped: max_psis_khat is null"
    else:
        check("psis_khat", cand["psis_khat"] <= gate.max_psis_khat,
              f"PSIS k-hat {cand['psis_khat']:.3f} is above max_psis_khat {gate.max_psis_khat} "
              f"(the variational posterior is unreliable)")
    check("latency", cand["latency_p95_ms"] <= gate.max_latency_p95_ms,
          f"p95 latency of single-row predict {cand['latency_p95_ms']:.1f} ms is above max_latency_p95_ms "
          f"{gate.max_latency_p95_ms}")
    return checks, reasons


# --- the gate -----------------------------------------------------------------------------------------------------


def evaluate(client, model_name: str, *, tracking_uri: str, candidate: str | None = None,
             against: str | None = None, data: str | Path | None = None, gate: GateConfig | None = None,
             log: bool = True) -> Verdict:
    """Run the gate on ``candidate`` (default ``@challenger``) against ``against`` (default ``@champion``).

    With ``log``, the verdict becomes a run of the ``viops-evaluation`` experiment and tags on the candidate version.

    Raises:
        RegistryError: unknown model, version or alias (an absent champion is not an error: see above).
        DataError: the evaluation data is missing or does not fit the models; nothing is logged or tagged.
    """
    cand = load_version(client, model_name, candidate or f"@{CHALLENGER}", tracking_uri=tracking_uri)
    champion_selector = against or f"@{CHAMPION}"
    champ = None
    if champion_selector == f"@{CHAMPION}" and alias_version(client, model_name, CHAMPION) is None:
        champ = None  # the first model: absolute thresholds only
    else:
        champ = load_version(client, model_name, champion_selector, tracking_uri=tracking_uri)
    gate = gate or _run_gate_config(client, cand.run_id, tracking_uri)

    if data is None:
        frame, source = _holdout(cand, tracking_uri)
    else:
        frame, source = read_table(data), str(data)
    has_target = cand.bundle.model_config.get("kind") != "vae"
    for loaded in (cand, champ):
        if loaded is not None:
            validate_input(frame, loaded, source, with_target=has_target)
            _check_labels(frame, loaded, source)
            _check_counts(frame, loaded, source)
    if len(frame) > gate.max_rows:
        frame = frame.sample(n=gate.max_rows, random_state=gate.seed)
    frame = frame.reset_index(drop=True)

    def khat(loaded: LoadedVersion) -> float | None:
        return client.get_run(loaded.run_id).data.metrics.get("final/psis_khat")

    metrics = {"candidate": version_metrics(cand, frame, gate, khat(cand)),
               "champion": version_metrics(champ, frame, gate, khat(champ)) if champ is not None else None}
    checks, reasons = _checks(metrics["candidate"], metrics["champion"], champ.version if champ else None, gate)
    verdict = Verdict(
        passed=not reasons, reasons=reasons, metrics=metrics, checks=checks, model=model_name,
        candidate_version=cand.version, champion_version=champ.version if champ else None,
        data={"source": source, "rows": len(frame)}, thresholds=gate.model_dump(mode="json"),
    )
    if log:
        _log_verdict(client, verdict)
    return verdict


def _log_verdict(client, verdict: Verdict) -> None:
    from mlflow.entities import Metric, Param

    experiment = client.get_experiment_by_name(EVALUATION_EXPERIMENT)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(EVALUATION_EXPERIMENT)
    status = "passed" if verdict.passed else "rejected"
    run = client.create_run(experiment_id, run_name=f"evaluate {verdict.model} v{verdict.candidate_version} vs "
                                                    f"v{verdict.champion_version or '-'}", tags={
        "viops.model": verdict.model, "viops.candidate_version": verdict.candidate_version,
        "viops.champion_version": verdict.champion_version or "", "viops.verdict": status,
        "viops.reasons": "\n".join(verdict.reasons)[:5000],
    })
    run_id = run.info.run_id
    now = int(time.time() * 1000)
    metrics = [Metric(f"{who}/{key}", value, now, 0) for who, values in verdict.metrics.items() if values
               for key, value in values.items() if math.isfinite(value)]
    metrics.append(Metric("passed", float(verdict.passed), now, 0))
    params = [Param(f"gate.{k}", str(v)) for k, v in verdict.thresholds.items()]
    params += [Param("data.source", verdict.data["source"][:6000]), Param("data.rows", str(verdict.data["rows"]))]
    client.log_batch(run_id, metrics=metrics, params=params)
    verdict.evaluation_run_id = run_id
    client.log_dict(run_id, verdict.to_json(), "verdict.json")
    client.set_terminated(run_id, status="FINISHED")
    for key, value in {
        "viops.gate.passed": "true" if verdict.passed else "false",
        "viops.gate.reasons": "\n".join(verdict.reasons)[:5000],
        "viops.gate.evaluation_run_id": run_id,
        "viops.gate.against_version": verdict.champion_version or "",
        "viops.gate.at": verdict.time,
    }.items():
        client.set_model_version_tag(verdict.model, verdict.candidate_version, key, value)
