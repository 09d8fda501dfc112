"""One window through every check: inputs, scoring (when the window is not scored yet), drift, calibration, VI health.

:func:`check_window` is what ``viops monitor`` runs per window (SLO evaluation and the decision build on its
report). Rows with NaN/inf features are counted and left out of scoring and of every statistic; rows whose label is
missing, non-finite or not a class the model knows are left out of calibration and of the ELBO/NLL.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from monitoring.checks import Champion, check_calibration, check_drift, check_inputs, check_vi_health
from monitoring.config import ChecksConfig
from pipelines.scoring import score_frame

__all__ = ["WindowReport", "check_window", "score_window", "run_monitor", "window_key_of"]


@dataclass
class WindowReport:
    window: str
    model: str
    version: str
    inputs: dict
    drift: dict | None
    calibration: dict | None
    vi_health: dict | None
    scoring: dict
    champion: dict | None = None
    drift_result: object = None  # the Evidently result of the feature drift (its HTML report)
    predictions: pd.DataFrame | None = None  # the champion's predictions, indexed like the window's finite rows

    def to_json(self) -> dict:
        return {"window": self.window, "model": self.model, "version": self.version, "inputs": self.inputs,
                "drift": self.drift, "calibration": self.calibration, "vi_health": self.vi_health,
                "scoring": self.scoring, "champion": self.champion}


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


def _labelled(frame: pd.DataFrame, finite: np.ndarray, champion: Champion) -> tuple[pd.DataFrame | None, int]:
    target = champion.target
    if champion.kind == "amortized" or target not in frame.columns:
        return None, 0
    rows = frame.loc[finite]
    labels = pd.to_numeric(rows[target], errors="coerce").to_numpy(dtype=float)
    ok = np.isfinite(labels)
    invalid = 0
    if champion.kind == "classification":
        known = ok & (labels == np.round(labels)) & (labels >= 0) & (labels < champion.loaded.bundle.num_classes)
        invalid = int((ok & ~known).sum())
        ok = known
    labelled = rows.loc[ok, [*champion.features, target]].astype("float64")
    return labelled, invalid


def check_window(frame: pd.DataFrame, champion: Champion, checks: ChecksConfig, *, window: str = "") -> WindowReport:
    """Run every enabled check on ``frame`` against ``champion``."""
    inputs, finite = check_inputs(frame, champion)
    predictions, scoring = score_window(frame, finite, champion) if finite.any() else (pd.DataFrame(), {})
    features = frame.loc[finite, champion.features].astype("float64")
    labelled, invalid = _labelled(frame, finite, champion)
    inputs["labelled_rows"] = 0 if labelled is None else int(len(labelled))
    inputs["invalid_labels"] = invalid
    if labelled is not None and len(labelled) > checks.row_cap:
        labelled = labelled.sample(n=checks.row_cap, random_state=checks.seed)
    sampled = features.sample(n=checks.row_cap, random_state=checks.seed) if len(features) > checks.row_cap else features
    drift, drift_result = (None, None)
    if checks.drift.enabled and len(features):
        drift, drift_result = check_drift(features, predictions, champion, checks.drift, checks.seed)
    calibration = None
    if checks.calibration.enabled and labelled is not None:
        calibration = check_calibration(labelled, champion, checks.calibration, checks.seed)
    vi_health = None
    if checks.vi_health.enabled:
        vi_health = check_vi_health(inputs, labelled, predictions, champion, checks.vi_health, checks.seed,
                                    features=sampled)
    about = {"version": champion.loaded.version, "promoted_at_seconds": champion.promoted_at}
    return WindowReport(window, champion.loaded.name, champion.loaded.version, inputs, drift, calibration, vi_health,
                        scoring, about, drift_result, predictions)


def window_key_of(path: Path, explicit: str | None = None) -> str:
    """The window's id: ``explicit``, else the store partition (``window=...``) the file sits in, else its name."""
    if explicit:
        return explicit
    for part in reversed(path.resolve().parts):
        if part.startswith("window="):
            return part.removeprefix("window=")
    return path.stem


def _write_back(window_path: Path, frame: pd.DataFrame, report: WindowReport) -> bool:
    """Store the predictions just made in the window's partition (rows with NaN/inf features get none), so the store
    holds scored windows and a re-run does not score again. Files outside a window store are left alone."""
    from monitoring.windows import WindowStore, parse_window_key

    partition = window_path.resolve().parent
    if not report.scoring.get("scored_now") or report.predictions is None or not partition.name.startswith("window="):
        return False
    scored = frame.copy()
    for column in report.predictions.columns:
        scored[column] = report.predictions[column].astype("float64").reindex(scored.index)
    store = WindowStore(partition.parent)
    when = parse_window_key(partition.name)
    store.write(when, scored, meta={**store.meta(when), "scored_by": f"{report.model}/{report.version}"})
    return True


def default_state_dir(window_path: Path) -> Path:
    """``.viops-monitor`` at the root of the window store the file belongs to (Parquet readers skip dot-folders),
    else beside the file."""
    resolved = window_path.resolve()
    for parent in resolved.parents:
        if parent.name.startswith("window="):
            return parent.parent / ".viops-monitor"
    return resolved.parent / ".viops-monitor"


def run_monitor(client, *, model: str, window_path: str | Path, tracking_uri: str, alias: str = "champion",
                window_id: str | None = None, checks: ChecksConfig | None = None, slos=None, runbooks=None,
                state_dir: str | Path | None = None, pushgateway: str | None = None,
                textfile: str | Path | None = None, execute: bool = False, actor: str = "viops-monitor") -> dict:
    """``viops monitor``: checks, SLOs, metrics, decision, incident record (and, with ``execute``, the action).

    Raises:
        DataError: unreadable window or missing feature columns (nothing is recorded or changed).
        RegistryError: no such model or alias.
    """
    from monitoring.checks import load_champion
    from monitoring.decision import MonitorState, decide, incident_id
    from monitoring.incidents import write_incident
    from monitoring.metrics import build_registry, export_metrics
    from monitoring.slo import evaluate_slos
    from pipelines.data import read_table
    from pipelines.registry import PREVIOUS_CHAMPION, alias_version, rollback

    checks = checks or ChecksConfig()
    window_path = Path(window_path)
    frame = read_table(window_path)
    window = window_key_of(window_path, window_id)
    champion = load_champion(client, model, tracking_uri=tracking_uri, alias=alias, checks=checks)
    report = check_window(frame, champion, checks, window=window)
    body = report.to_json()
    body["window_path"] = str(window_path.resolve())
    body["scoring"]["written_back"] = _write_back(window_path, frame, report)

    state_dir = Path(state_dir) if state_dir else default_state_dir(window_path)
    state = MonitorState.load(state_dir / f"{model}@{alias}.json")
    history = state.before(window)
    statuses = evaluate_slos(slos, body, [h.get("slo", {}) for h in history]) if slos is not None else []
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
    facts = {"labelled_rows": body["inputs"]["labelled_rows"], "nonfinite_values": body["inputs"]["nonfinite_values"],
             "windows_since_promotion": since,
             "has_previous_champion": alias_version(client, model, PREVIOUS_CHAMPION) is not None}
    decision = decide(statuses, runbooks or {}, history, facts)
    body["decision"] = decision.to_json()
    body["facts"] = facts

    registry = build_registry(body, statuses, model=model, alias=alias, version=champion.loaded.version)
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
        from monitoring.retrain import retrain_with_window

        body["executed"] = retrain_with_window(
            client, model=model, champion_run_id=champion.loaded.run_id, window_path=window_path,
            added_rows=body["inputs"]["labelled_rows"], window=window,
            reason=f"{decision.alert} on window {window}: {decision.reason}", actor=actor, tracking_uri=tracking_uri,
            workdir=state_dir / "retrain" / window.replace(":", "-"),
            trigger={"incident_id": body["incident_id"], "window": window},
        )
    if execute and decision.action == "rollback":
        change = rollback(client, model, reason=f"{decision.alert} on window {window}: {decision.reason}",
                          actor=actor, verdict={"decision": body["decision"], "incident_id": body["incident_id"]},
                          trigger={"incident_id": body["incident_id"], "window": window})
        body["executed"] = change.to_json()
    state.record({"window": window, "version": champion.loaded.version,
                  "slo": {s.name: s.good for s in statuses}, "action": decision.action, "runbook": decision.alert})
    return body
