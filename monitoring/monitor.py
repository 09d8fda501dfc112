"""One window through every check: inputs, scoring (when the window is not scored yet), drift, calibration, VI health.

:func:`check_window` is what ``viops monitor`` runs per window (SLO evaluation and the decision build on its
report). Rows with NaN/inf features are counted and left out of scoring and of every statistic; rows whose label is
missing, non-finite or not a class the model knows are left out of calibration and of the ELBO/NLL.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from monitoring import DEFAULT_CHECKS, DEFAULT_RUNBOOKS, DEFAULT_SLOS
from monitoring.checks.calibration import CalibrationCheck
from monitoring.checks.champion import Champion
from monitoring.checks.config import ChecksConfig
from monitoring.checks.drift import DriftCheck
from monitoring.checks.inputs import WindowRows, check_inputs
from monitoring.checks.results import ChampionInfo, DriftSummary, InputsResult, WindowReport
from monitoring.checks.vi_health import VIHealthCheck
from monitoring.window_scoring import score_window
from monitoring.windows import Window
from pipelines.workspace import replacing

__all__ = ["WindowReport", "WindowContext", "build_checks", "check_window", "judge", "run_monitor", "monitor_files"]


def build_checks(config: ChecksConfig) -> list[DriftCheck | CalibrationCheck | VIHealthCheck]:
    """The enabled checks of ``config``, in the order they run."""
    checks = [DriftCheck(config.drift, config.seed), CalibrationCheck(config.calibration, config.seed),
              VIHealthCheck(config.vi_health, config.seed)]
    return [check for check in checks if check.config.enabled]


@dataclass(frozen=True)
class WindowContext:
    """What a window is judged against besides the champion: earlier windows, as the monitor's state remembers them.

    Attributes:
        usual_rows: rows a window usually has (None: unknown yet).
        cusum_before: the slow-drift CUSUM after the last window this champion watched (None: first window).
    """

    usual_rows: float | None = None
    cusum_before: float | None = None

    @classmethod
    def from_history(cls, history: list[dict], version: str, config: ChecksConfig) -> WindowContext:
        """From the state's entries of earlier windows (oldest first): the configured or median volume, and the
        CUSUM of the current champion (it starts again at a new champion, whose reference is new)."""
        usual = config.volume.usual_rows
        if usual is None:
            counts = [h["rows"] for h in history if h.get("rows")][-config.volume.history:]
            usual = float(np.median(counts)) if counts else None
        cusum = None
        if history and history[-1].get("version") == version:
            cusum = history[-1].get("cusum")
        return cls(usual, cusum)


def _volume(inputs: InputsResult, usual: float | None) -> InputsResult:
    ratio = inputs.rows / usual if usual else (0.0 if inputs.rows == 0 else None)
    return dataclasses.replace(inputs, usual_rows=usual, volume_ratio=ratio)


def _cusum(drift: DriftSummary | None, before: float | None, config: ChecksConfig) -> DriftSummary | None:
    """One step of the one-sided CUSUM of the weighted drift distance, with a window-size-aware allowance."""
    if drift is None or drift.weighted_distance is None:
        return drift
    allowance = config.drift.cusum_allowance(drift.rows["reference"], drift.rows["current"])
    return dataclasses.replace(drift, cusum=max(0.0, (before or 0.0) + drift.weighted_distance - allowance))


def check_window(window: Window, champion: Champion, config: ChecksConfig,
                 context: WindowContext | None = None, scored: pd.DataFrame | None = None) -> WindowReport:
    """Run every enabled check of ``config`` on ``window`` against ``champion``: the rows are prepared once (finite
    rows scored, labelled rows by the shared rule, both capped at ``row_cap``), then each check that has the rows it
    needs calculates its result from them (:attr:`WindowReport.evidence` says which had too few). ``scored``: this
    version's predictions of these rows, already made (a canary's slice of the window it scored whole)."""
    context = context or WindowContext()
    frame = window.frame
    inputs, finite = check_inputs(frame, champion)
    if scored is not None:
        predictions, scoring = scored.loc[frame.index[finite]], {"scored_now": 0, "version": champion.loaded.version}
    elif finite.any():
        predictions, scoring = score_window(frame, finite, champion, window.scored_by)
    else:
        predictions, scoring = pd.DataFrame(), {}
    features = frame.loc[finite, champion.features].astype("float64")
    found = champion.labelled(window.frame)
    labelled, invalid = (None, 0) if found is None else (found.rows, found.invalid_labels)
    if labelled is not None:  # a row with a schema problem reaches no check, labelled or not
        labelled = labelled[labelled.index.isin(frame.index[finite])]
    inputs = dataclasses.replace(_volume(inputs, context.usual_rows),
                                 labelled_rows=0 if labelled is None else int(len(labelled)), invalid_labels=invalid)
    if labelled is not None and len(labelled) > config.row_cap:
        labelled = labelled.sample(n=config.row_cap, random_state=config.seed)
    sampled = features
    if len(features) > config.row_cap:
        sampled = features.sample(n=config.row_cap, random_state=config.seed)
    return judge(window, champion, config, context, WindowRows(inputs, features, sampled, predictions, labelled),
                 scoring, predictions)


def judge(window: Window, champion: Champion, config: ChecksConfig, context: WindowContext, rows: WindowRows,
          scoring: dict, predictions: pd.DataFrame | None) -> WindowReport:
    """Every enabled check on the prepared ``rows`` of ``window``, and the slow-drift CUSUM: the window's report."""
    results, evidence = {}, {}
    for check in build_checks(config):
        evidence.update(check.evidence(rows, champion))
        results[check.name] = check.calculate(rows, champion)
    drift = _cusum(results.get("drift"), context.cusum_before, config)
    return WindowReport(window.key, champion.loaded.name, champion.loaded.version, rows.inputs, drift,
                        results.get("calibration"), results.get("vi_health"), scoring,
                        ChampionInfo(champion.loaded.version, champion.promoted_at), predictions, evidence)


def run_monitor(client, *, model: str, window_path: str | Path, tracking_uri: str, alias: str = "champion",
                window_id: str | None = None, checks: ChecksConfig | None = None, slos=None, runbooks=None,
                state_dir: str | Path | None = None, pushgateway: str | None = None,
                textfile: str | Path | None = None, execute: bool = False, dispatched: bool = False,
                actor: str = "viops-monitor", drift_report: bool = True, deploy_dispatched: bool = False) -> dict:
    """``viops monitor``: checks, SLOs, metrics, decision, incident record (and, with ``execute``, the action);
    then, while a challenger is in shadow, its pass over the window (``body["deploy"]``, :mod:`monitoring.challenger`).

    A decided ``retrain``/``rollback`` is carried out here with ``execute``; with ``dispatched`` the caller carries it
    out (the vi_monitoring DAG triggers svi_retrain). Either way it counts for cooldowns. Otherwise it is
    ``pending``: visible in the result and the state, and no cooldown starts. The challenger's promotion or
    rejection is carried out with ``execute``, and by the caller with ``dispatched`` or ``deploy_dispatched``.

    Raises:
        DataError: unreadable window or missing feature columns (nothing is recorded or changed).
        RegistryError: no such model or alias.
    """
    import time

    from monitoring.checks.champion import load_champion
    from monitoring.decision import AUTOMATED, MonitorState, decide, incident_id, windows_since_promotion
    from monitoring.incidents import write_incident
    from monitoring.large_windows import check_large_window, is_large
    from monitoring.metrics import build_registry, export_metrics
    from monitoring.slo import evaluate_slos
    from pipelines.registry.versions import CHAMPION, PREVIOUS_CHAMPION, alias_version

    checks = checks or ChecksConfig()
    large = is_large(window_path, checks)
    current = Window.read(window_path, window_id, rows=not large)
    window = current.key
    state_dir = Path(state_dir) if state_dir else current.default_state_dir()
    champion = load_champion(client, model, tracking_uri=tracking_uri, alias=alias, checks=checks,
                             state_dir=state_dir)
    state = MonitorState.load(state_dir / f"{model}@{alias}.json")
    history = state.before(window)
    report = (check_large_window if large else check_window)(
        current, champion, checks, WindowContext.from_history(history, champion.loaded.version, checks))
    body = report.to_json()
    body["window_path"] = str(current.path)
    body["drift_report"] = _write_drift_report(report, current) if drift_report else None
    # Store the predictions just made in the window's partition, so a re-run does not score again.
    scored_now = report.scoring.get("scored_now") and report.predictions is not None
    body["scoring"]["written_back"] = report.scoring.get("written_back") or bool(scored_now) and current.write_scored(
        report.predictions, scored_by=f"{report.model}/{report.version}")

    statuses = evaluate_slos(slos, report, [h.get("slo", {}) for h in history]) if slos is not None else []
    body["slo"] = [{"name": s.name, "status": s.status, "value": s.value, "threshold": s.threshold,
                    "burn_rate": s.burn_rate, "budget_remaining": s.budget_remaining, "reason": s.reason}
                   for s in statuses]
    facts = {"labelled_rows": report.inputs.labelled_rows, "nonfinite_values": report.inputs.nonfinite_values,
             "windows_since_promotion": windows_since_promotion(history, champion.promoted_at),
             "has_previous_champion": alias_version(client, model, PREVIOUS_CHAMPION) is not None}
    decision = decide(statuses, runbooks or {}, history, facts)
    body["decision"] = decision.to_json()
    body["facts"] = facts

    registry = build_registry(report, statuses, model=model, alias=alias, version=champion.loaded.version,
                              window_start=current.start.timestamp() if current.start else None,
                              decision=decision.action, signature_verified=champion.loaded.verified)
    export = export_metrics(registry, grouping_key={"model": model, "alias": alias}, pushgateway=pushgateway,
                            textfile=textfile or state_dir / f"{model}@{alias}.prom")
    body["metrics"] = export.to_json()

    body["incident_id"] = None
    if decision.action != "none" or decision.firing:
        body["incident_id"] = incident_id(model, alias, window)
        record = {"incident_id": body["incident_id"], "model": model, "alias": alias, "severity": decision.severity,
                  "version": champion.loaded.version, "window": window, "decision": body["decision"],
                  "slo": body["slo"], "drift_report": body["drift_report"], "report": report.to_json()}
        body["incident_run_id"] = write_incident(client, record, state_dir, report.drift_result,
                                                 metrics=report.key_metrics())

    body["executed"] = None
    if execute and decision.action in AUTOMATED:
        from pipelines.registry.lease import LeaseHeld

        try:
            body["executed"] = _execute(client, decision, champion, current, report, body, state_dir=state_dir,
                                        tracking_uri=tracking_uri, actor=actor, pushgateway=pushgateway)
        except LeaseHeld as exc:  # single flight: another monitor or operator is already on it
            body["executed"] = {"action": decision.action, "skipped": True, "reason": str(exc)}
    automated = decision.action in AUTOMATED
    body["pending"] = decision.action if automated and not execute and not dispatched else None
    state.record({"window": window, "version": champion.loaded.version, "rows": report.inputs.rows,
                  "cusum": report.drift.cusum if report.drift and report.drift.cusum is not None
                  else (history[-1].get("cusum") if history and history[-1].get("version") == report.version
                        else None),
                  "slo": {s.name: s.good for s in statuses}, "firing": decision.firing, "action": decision.action,
                  "executed": automated and (execute or dispatched), "runbook": decision.alert,
                  "monitored_at": time.time()})
    body["deploy"] = None if alias != CHAMPION or large else _challenger_pass(
        client, current, champion, statuses, model=model, tracking_uri=tracking_uri, checks=checks, slos=slos,
        state_dir=state_dir, champion_action=decision.action, pushgateway=pushgateway, execute=execute,
        dispatched=dispatched or deploy_dispatched, actor=actor, trigger={"incident_id": body["incident_id"]})
    return body


def _challenger_pass(client, *args, **kwargs) -> dict | None:
    """The live challenger's pass (:func:`monitoring.challenger.monitor_challenger`), after the champion's window is
    recorded. A challenger that cannot be judged (its version or evidence unreadable) is reported, and never stops
    the champion's monitoring or its decision from being carried out."""
    import logging

    from monitoring.challenger import monitor_challenger
    from pipelines.registry.versions import RegistryError
    from pipelines.tables import DataError

    try:
        return monitor_challenger(client, *args, **kwargs)
    except (RegistryError, DataError) as exc:
        logging.getLogger(__name__).warning("the live challenger could not be judged on this window: %s", exc)
        return {"error": f"the live challenger could not be judged on this window: {exc}", "decision": None}


def _write_drift_report(report: WindowReport, window: Window) -> str | None:
    """Write the window's Evidently drift report beside it (atomically); its path, or None without a drift result."""
    result = report.drift_result
    if result is None:
        return None
    target = window.drift_report_path()
    with replacing(target) as partial:
        result.save_html(partial)
    return str(target)


def monitor_files(*, model: str, window_path: str | Path, tracking_uri: str | None = None,
                  checks: str | Path = DEFAULT_CHECKS, slo: str | Path = DEFAULT_SLOS,
                  runbooks: str | Path = DEFAULT_RUNBOOKS, **options) -> dict:
    """:func:`run_monitor` as ``viops monitor`` runs it: the checks, SLOs and runbooks read from files, the tracking
    URI resolved as every command resolves it (``$MLFLOW_TRACKING_URI``), under viops' request budget. Returns the
    result as ``viops monitor --json`` prints it: plain JSON, with ``tracking_uri``, and no password in any URI.

    Raises:
        ConfigError: a configuration file is invalid; and what :func:`run_monitor` raises.
    """
    import json

    from mlflow import MlflowClient

    from monitoring.checks.config import load_checks_config
    from monitoring.runbooks import load_runbooks
    from monitoring.slo import load_slos
    from pipelines.tracking import bound_request_time, redact, resolve_tracking_uri

    bound_request_time()
    uri = resolve_tracking_uri(tracking_uri)
    result = run_monitor(MlflowClient(tracking_uri=uri, registry_uri=uri), model=model, window_path=window_path,
                         tracking_uri=uri, checks=load_checks_config(checks), slos=load_slos(slo),
                         runbooks=load_runbooks(runbooks), **options)
    return json.loads(redact(json.dumps({**result, "tracking_uri": uri}, default=str)))


def _execute(client, decision, champion: Champion, current: Window, report: WindowReport, body: dict, *,
             state_dir: Path, tracking_uri: str, actor: str, pushgateway: str | None) -> dict:
    """Carry out a decided retrain or rollback; returns what the registry or the retrain says. A champion change
    and the retrain's gate verdict are pushed as ``viops rollback``, ``evaluate`` and ``promote`` push them."""
    from monitoring.events import push_change, push_verdict
    from pipelines.registry.promotion import rollback

    window = current.key
    reason = f"{decision.alert} on window {window}: {decision.reason}"
    trigger = {"incident_id": body["incident_id"], "window": window}
    if decision.action == "rollback":
        change = rollback(client, report.model, reason=reason, actor=actor,
                          verdict={"decision": body["decision"], "incident_id": body["incident_id"]}, trigger=trigger)
        result = change.to_json()
        return {**result, "pushed": push_change(result, pushgateway)}
    from pipelines.lifecycle.retrain import RetrainRequest, retrain
    from pipelines.run_artifacts import RESOLVED_CONFIG

    workdir = state_dir / "retrain" / window.replace(":", "-")
    config = champion.loaded.artifacts(tracking_uri).download(RESOLVED_CONFIG, workdir)
    request = RetrainRequest(config=str(config), reason=reason, workdir=str(workdir), tracking_uri=tracking_uri,
                             window=str(current.path), run_name=f"viops-monitor/{window}", actor=actor,
                             trigger=trigger)
    outcome = retrain(request)
    pushed = [push_verdict(outcome["verdict"], pushgateway), push_change(outcome["promotion"] or {}, pushgateway)]
    return {**outcome, "added_rows": report.inputs.labelled_rows, "pushed": any(pushed)}
