"""One window through every check: inputs, scoring (when the window is not scored yet), drift, calibration, VI health.

:func:`check_window` is what ``viops monitor`` runs per window (SLO evaluation and the decision build on its
report). Rows with NaN/inf features are counted and left out of scoring and of every statistic; rows whose label is
missing, non-finite or not a class the model knows are left out of calibration and of the ELBO/NLL.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from monitoring.checks.calibration import CalibrationCheck
from monitoring.checks.champion import Champion
from monitoring.checks.config import ChecksConfig
from monitoring.checks.drift import DriftCheck
from monitoring.checks.inputs import WindowRows, check_inputs
from monitoring.checks.results import ChampionInfo, WindowReport
from monitoring.checks.vi_health import VIHealthCheck
from monitoring.windows import Window
from pipelines.serving.scoring import score_frame

__all__ = ["WindowReport", "build_checks", "check_window", "score_window", "run_monitor"]


def build_checks(config: ChecksConfig) -> list[DriftCheck | CalibrationCheck | VIHealthCheck]:
    """The enabled checks of ``config``, in the order they run."""
    checks = [DriftCheck(config.drift, config.seed), CalibrationCheck(config.calibration, config.seed),
              VIHealthCheck(config.vi_health, config.seed)]
    return [check for check in checks if check.config.enabled]


def score_window(frame: pd.DataFrame, finite: np.ndarray, champion: Champion) -> tuple[pd.DataFrame, dict]:
    """The champion's predictions for the finite rows: those already in the window when it carries a complete set,
    else scored now. Returns ``(predictions indexed like the finite rows, scoring summary)``."""
    columns = list(champion.reference_predictions.columns)
    rows = frame.loc[finite]
    if all(c in frame.columns for c in columns) and np.isfinite(rows[columns].to_numpy(dtype=float)).all():
        return rows[columns], {"scored_now": 0, "version": "as stored in the window"}
    features = rows[champion.features].astype("float64")
    predictions, seconds = score_frame(champion.loaded, features)
    predictions.index = rows.index
    latency = [s * 1000.0 for s in seconds]
    return predictions, {"scored_now": int(len(rows)), "version": champion.loaded.version,
                         "batch_latency_p95_ms": float(np.percentile(latency, 95)) if latency else None}


def _labelled(window: Window, champion: Champion) -> tuple[pd.DataFrame | None, int]:
    """The window's labelled rows by the shared rule; None when labels cannot exist (no target column, or the VAE)."""
    if champion.kind == "amortized" or champion.target not in window.frame.columns:
        return None, 0
    num_classes = champion.loaded.bundle.num_classes if champion.kind == "classification" else None
    labelled = window.labelled(champion.features, champion.target, num_classes=num_classes)
    return labelled.rows, labelled.invalid_labels


def check_window(window: Window, champion: Champion, config: ChecksConfig) -> WindowReport:
    """Run every enabled check of ``config`` on ``window`` against ``champion``: the rows are prepared once (finite
    rows scored, labelled rows by the shared rule, both capped at ``row_cap``), then each check calculates its
    result from them."""
    frame = window.frame
    inputs, finite = check_inputs(frame, champion)
    predictions, scoring = score_window(frame, finite, champion) if finite.any() else (pd.DataFrame(), {})
    features = frame.loc[finite, champion.features].astype("float64")
    labelled, invalid = _labelled(window, champion)
    inputs = dataclasses.replace(inputs, labelled_rows=0 if labelled is None else int(len(labelled)),
                                 invalid_labels=invalid)
    if labelled is not None and len(labelled) > config.row_cap:
        labelled = labelled.sample(n=config.row_cap, random_state=config.seed)
    sampled = features
    if len(features) > config.row_cap:
        sampled = features.sample(n=config.row_cap, random_state=config.seed)
    rows = WindowRows(inputs, features, sampled, predictions, labelled)
    results = {check.name: check.calculate(rows, champion) for check in build_checks(config)}
    return WindowReport(window.key, champion.loaded.name, champion.loaded.version, inputs, results.get("drift"),
                        results.get("calibration"), results.get("vi_health"), scoring,
                        ChampionInfo(champion.loaded.version, champion.promoted_at), predictions)


def run_monitor(client, *, model: str, window_path: str | Path, tracking_uri: str, alias: str = "champion",
                window_id: str | None = None, checks: ChecksConfig | None = None, slos=None, runbooks=None,
                state_dir: str | Path | None = None, pushgateway: str | None = None,
                textfile: str | Path | None = None, execute: bool = False, actor: str = "viops-monitor") -> dict:
    """``viops monitor``: checks, SLOs, metrics, decision, incident record (and, with ``execute``, the action).

    Raises:
        DataError: unreadable window or missing feature columns (nothing is recorded or changed).
        RegistryError: no such model or alias.
    """
    from monitoring.checks.champion import load_champion
    from monitoring.decision import MonitorState, decide, incident_id
    from monitoring.incidents import write_incident
    from monitoring.metrics import build_registry, export_metrics
    from monitoring.slo import evaluate_slos
    from pipelines.registry.promotion import rollback
    from pipelines.registry.versions import PREVIOUS_CHAMPION, alias_version

    checks = checks or ChecksConfig()
    current = Window.read(window_path, window_id)
    window = current.key
    champion = load_champion(client, model, tracking_uri=tracking_uri, alias=alias, checks=checks)
    report = check_window(current, champion, checks)
    body = report.to_json()
    body["window_path"] = str(current.path)
    # Store the predictions just made in the window's partition, so a re-run does not score again.
    scored_now = report.scoring.get("scored_now") and report.predictions is not None
    body["scoring"]["written_back"] = bool(scored_now) and current.write_scored(
        report.predictions, scored_by=f"{report.model}/{report.version}")

    state_dir = Path(state_dir) if state_dir else current.default_state_dir()
    state = MonitorState.load(state_dir / f"{model}@{alias}.json")
    history = state.before(window)
    statuses = evaluate_slos(slos, report, [h.get("slo", {}) for h in history]) if slos is not None else []
    body["slo"] = [{"name": s.name, "status": s.status, "value": s.value, "threshold": s.threshold,
                    "burn_rate": s.burn_rate, "budget_remaining": s.budget_remaining, "reason": s.reason}
                   for s in statuses]

    since = None
    if history:
        since = 1
        for entry in reversed(history):
            if entry.get("version") != champion.loaded.version:
                break
            since += 1
    facts = {"labelled_rows": report.inputs.labelled_rows, "nonfinite_values": report.inputs.nonfinite_values,
             "windows_since_promotion": since,
             "has_previous_champion": alias_version(client, model, PREVIOUS_CHAMPION) is not None}
    decision = decide(statuses, runbooks or {}, history, facts)
    body["decision"] = decision.to_json()
    body["facts"] = facts

    registry = build_registry(report, statuses, model=model, alias=alias, version=champion.loaded.version)
    export = export_metrics(registry, grouping_key={"model": model, "alias": alias}, pushgateway=pushgateway,
                            textfile=textfile or state_dir / f"{model}@{alias}.prom")
    body["metrics"] = export.to_json()

    body["incident_id"] = None
    if decision.firing:
        body["incident_id"] = incident_id(model, alias, window)
        record = {"incident_id": body["incident_id"], "model": model, "alias": alias,
                  "version": champion.loaded.version, "window": window, "decision": body["decision"],
                  "slo": body["slo"], "report": report.to_json()}
        body["incident_run_id"] = write_incident(client, record, state_dir, report.drift_result)

    body["executed"] = None
    if execute and decision.action == "retrain":
        from pipelines.lifecycle.retrain import RetrainRequest, retrain
        from pipelines.run_artifacts import RESOLVED_CONFIG, RunArtifacts

        workdir = state_dir / "retrain" / window.replace(":", "-")
        config = RunArtifacts(tracking_uri, champion.loaded.run_id).download(RESOLVED_CONFIG, workdir)
        request = RetrainRequest(
            config=str(config), reason=f"{decision.alert} on window {window}: {decision.reason}",
            workdir=str(workdir), tracking_uri=tracking_uri, window=str(current.path),
            run_name=f"viops-monitor/{window}", actor=actor,
            trigger={"incident_id": body["incident_id"], "window": window},
        )
        body["executed"] = {**retrain(request), "added_rows": report.inputs.labelled_rows}
    if execute and decision.action == "rollback":
        change = rollback(client, model, reason=f"{decision.alert} on window {window}: {decision.reason}",
                          actor=actor, verdict={"decision": body["decision"], "incident_id": body["incident_id"]},
                          trigger={"incident_id": body["incident_id"], "window": window})
        body["executed"] = change.to_json()
    state.record({"window": window, "version": champion.loaded.version,
                  "slo": {s.name: s.good for s in statuses}, "action": decision.action, "runbook": decision.alert})
    return body
