"""The evaluation gate: score a candidate version and the champion on the same held-out data, apply thresholds.

``viops evaluate --model NAME`` loads both versions from the registry (the candidate defaults to ``@challenger``),
scores them on the candidate's held-out split (logged by training as ``evaluation/holdout.parquet``) or on a given
window, and checks the candidate against the thresholds of its config's ``gate:`` section (docs/lifecycle.md):

- predictive NLL (nats per datum, on the original target scale) not worse than the champion's by more than
  ``nll_tolerance``; with no champion this comparison is skipped and only the absolute thresholds apply;
- calibration: ECE (classifiers) at most ``max_ece``; 90%-interval coverage (regression) inside ``coverage_90``;
- PSIS k-hat of the fit (the training run's ``final/psis_khat``) at most ``max_psis_khat`` where the model has one;
- posterior SDs within ``sd_ratio_to_laplace`` of the Laplace approximation's (``final/sd_ratio_to_laplace_*``)
  where the run logged a trusted Laplace reference (``final/laplace_trusted``): k-hat misses a q that is too wide;
- no NaN/inf in the candidate's predictions; p95 latency of single-row ``predict`` calls within the bound.

The verdict ``{passed, reasons[], metrics{candidate, champion}}`` is logged as a run of the ``viops-evaluation``
experiment and tagged on the candidate version (``viops.gate.*``), where ``viops promote`` reads it. Bad input
(missing columns, NaN, labels the model cannot have) is an error before anything is logged or tagged.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.config.schema import GateConfig
from pipelines.registry.verdict import Verdict, apply_thresholds
from pipelines.registry.versions import CHALLENGER, CHAMPION, RegistryError, alias_version
from pipelines.run_artifacts import HOLDOUT
from pipelines.serving.loading import LoadedVersion, load_version
from pipelines.serving.scoring import validate_input
from pipelines.tables import DataError, read_table

__all__ = ["EVALUATION_EXPERIMENT", "evaluate", "version_metrics"]

EVALUATION_EXPERIMENT = "viops-evaluation"


def _holdout(candidate: LoadedVersion, tracking_uri: str) -> tuple[pd.DataFrame, str]:
    frame = candidate.artifacts(tracking_uri).holdout()
    if frame is None:
        raise DataError(f"run {candidate.run_id} of version {candidate.version} logged no held-out split "
                        f"({HOLDOUT}); pass --data FILE with features and target")
    return frame, f"held-out split of run {candidate.run_id}"


def _check_labels(frame: pd.DataFrame, loaded: LoadedVersion, source: str) -> None:
    bundle = loaded.bundle
    if bundle.num_classes is None:
        return
    labels = frame[bundle.target].to_numpy()
    bad = (labels != np.round(labels)) | (labels < 0) | (labels >= bundle.num_classes)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(f"data {source}: target column {bundle.target!r} must hold class indices "
                        f"0..{bundle.num_classes - 1} for version {loaded.version} of {loaded.name}; found {labels[row]!r} at row {row}")


def _check_counts(frame: pd.DataFrame, loaded: LoadedVersion, source: str) -> None:
    bundle = loaded.bundle
    if bundle.task.kind != "amortized":
        return
    total = bundle.task.max_count
    values = frame[bundle.features].to_numpy()
    bad = (values < 0) | (values > total) | (values != np.round(values))
    if bad.any():
        row, col = (int(i[0]) for i in np.nonzero(bad))
        raise DataError(f"data {source}: column {bundle.features[col]!r} must hold counts 0..{total}; "
                        f"found {values[row, col]!r} at row {row}")


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


#: Diagnostics of the fit that the gate reads from the training run (``final/<name>``) where it logged them.
FIT_DIAGNOSTICS = ("psis_khat", "sd_ratio_to_laplace_min", "sd_ratio_to_laplace_max", "laplace_trusted")


def version_metrics(loaded: LoadedVersion, frame: pd.DataFrame, gate: GateConfig,
                    fit_diagnostics: dict[str, float] | None = None) -> dict:
    """Predictive NLL, calibration, NaN count and single-row latency of one version on ``frame`` (validated), with
    the fit's own diagnostics (PSIS k-hat, SD ratios to the Laplace approximation) where its run logged them."""
    from pipelines.serving.predictive_metrics import predictive_metrics

    b = loaded.bundle
    out = predictive_metrics(loaded.predictor, frame, num_samples=gate.predictive_samples, seed=gate.seed)
    features = frame[b.features]
    predictions = loaded.pyfunc.predict(features)
    numeric = predictions.select_dtypes("number").to_numpy(dtype=float)
    out["nan_count"] = float((~np.isfinite(numeric)).sum())
    latency = _latency_ms(loaded, features, gate.latency_requests)
    out["latency_p50_ms"] = float(np.percentile(latency, 50))
    out["latency_p95_ms"] = float(np.percentile(latency, 95))
    out.update({k: float(v) for k, v in (fit_diagnostics or {}).items()})
    return out


def evaluate(client, model_name: str, *, tracking_uri: str, candidate: str | None = None,
             against: str | None = None, data: str | Path | None = None, gate: GateConfig | None = None,
             log: bool = True) -> Verdict:
    """Run the gate on ``candidate`` (default ``@challenger``) against ``against`` (default ``@champion``).

    With ``log``, the verdict becomes a run of the ``viops-evaluation`` experiment and tags on the candidate version.

    Raises:
        RegistryError: unknown model, version or alias (an absent champion is not an error: see above), or the
            candidate is the version it would be compared with.
        DataError: the evaluation data is missing or does not fit the models; nothing is logged or tagged.
    """
    cand = load_version(client, model_name, candidate or f"@{CHALLENGER}", tracking_uri=tracking_uri)
    champion_selector = against or f"@{CHAMPION}"
    champ = None
    if champion_selector == f"@{CHAMPION}" and alias_version(client, model_name, CHAMPION) is None:
        champ = None  # the first model: absolute thresholds only
    else:
        champ = load_version(client, model_name, champion_selector, tracking_uri=tracking_uri)
    if champ is not None and champ.version == cand.version:
        raise RegistryError(f"version {cand.version} of {model_name} is {champion_selector} itself: a version "
                            f"compared with itself says nothing, so there is no verdict. Evaluate another version, "
                            f"or compare this one with an earlier one: --against N")
    gate = gate or cand.artifacts(tracking_uri).gate_config()

    if data is None:
        frame, source = _holdout(cand, tracking_uri)
    else:
        frame, source = read_table(data), str(data)
    has_target = cand.bundle.task.has_target
    for loaded in (cand, champ):
        if loaded is not None:
            validate_input(frame, loaded, source, with_target=has_target)
            _check_labels(frame, loaded, source)
            _check_counts(frame, loaded, source)
    if len(frame) > gate.max_rows:
        frame = frame.sample(n=gate.max_rows, random_state=gate.seed)
    frame = frame.reset_index(drop=True)

    def diagnostics(loaded: LoadedVersion) -> dict[str, float]:
        logged = client.get_run(loaded.run_id).data.metrics
        return {k: logged[f"final/{k}"] for k in FIT_DIAGNOSTICS if f"final/{k}" in logged}

    metrics = {"candidate": version_metrics(cand, frame, gate, diagnostics(cand)),
               "champion": version_metrics(champ, frame, gate, diagnostics(champ)) if champ is not None else None}
    checks, reasons = apply_thresholds(metrics["candidate"], metrics["champion"], champ.version if champ else None,
                                       gate)
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

    from pipelines.tracking import experiment_id as get_experiment_id

    experiment_id = get_experiment_id(client, EVALUATION_EXPERIMENT)
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
