"""The challenger's pass over a window while it is deployed live: what ``viops monitor`` adds after the champion's.

The challenger scores the window (never reusing the champion's stored predictions), every check and SLO runs on
its results against its own reference and baselines, the two versions' NLL is compared row by row on the same
labelled rows, and the window is judged and the deployment decided (:mod:`monitoring.shadow`). In canary the rows it
answered (routed as production routes them, :func:`~pipelines.serving.routing.route`) are also checked on their
own; a calibration or latency breach there rolls the canary back, with an incident (runbook ``ViopsCanaryBreach``).
Its predictions go to the window's partition, its series to Prometheus with ``alias="challenger"``, its verdicts to
the monitor's state (``<model>@challenger.json``). With ``execute`` the decision is carried out here; with
``dispatched`` the vi_monitoring DAG carries it out; otherwise it is pending and decided again on the next window.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pandas as pd

from monitoring.alerts import CANARY_ALERT
from monitoring.checks.champion import Champion, load_champion
from monitoring.checks.config import ChecksConfig
from monitoring.decision import MonitorState
from monitoring.monitor import WindowContext, check_window
from monitoring.shadow import CANARY_OBJECTIVES, DeploymentDecision, decide_deployment, judge_window, paired_nll
from monitoring.windows import Window
from pipelines.registry.versions import CHALLENGER

__all__ = ["monitor_challenger", "carry_out", "SHADOW_GAUGES"]

#: The challenger's shadow gauges, beside its window series (labels model, alias="challenger", version).
SHADOW_GAUGES = {
    "viops_shadow_clean_windows": "Clean shadow windows of the challenger so far.",
    "viops_shadow_nll_difference_nats": "Mean per-row predictive NLL of the challenger minus the champion's on the "
                                        "window's labelled rows (positive: the challenger fits worse).",
    "viops_shadow_nll_difference_upper_nats": "Upper confidence bound of that paired difference.",
    "viops_canary_fraction_ratio": "Share of the traffic the canary answers (0 in shadow).",
}


def _paired_rows(current: Window, champion: Champion, challenger: Champion, checks: ChecksConfig) -> pd.DataFrame:
    """The window's rows both versions are compared on: labelled rows by the shared rule (the VAE: finite rows),
    capped at ``row_cap`` as the checks are; empty when the versions do not read the same columns."""
    if champion.features != challenger.features or champion.target != challenger.target:
        return pd.DataFrame()
    if champion.kind == "amortized":
        frame = current.frame[champion.features]
        rows = frame[frame.notna().all(axis=1)].astype("float64")
    elif (found := champion.labelled(current.frame)) is None:
        return pd.DataFrame()
    else:
        rows = found.rows
    if len(rows) > checks.row_cap:
        rows = rows.sample(n=checks.row_cap, random_state=checks.seed)
    return rows


def _canary_slice(current: Window, deployment, challenger: Champion, checks: ChecksConfig, slos, scored):
    """The canary's own rows (routed as production routes them) checked on their own, with the predictions the
    challenger made of the whole window (``scored``): ``(report, statuses)``."""
    from monitoring.slo import evaluate_slos
    from pipelines.serving.routing import route

    answered = route(current.frame, deployment.fraction, deployment.policy.key_column)
    rows = dataclasses.replace(current, frame=current.frame.loc[answered])
    calibration_and_latency = checks.model_copy(update={"drift": checks.drift.model_copy(update={"enabled": False})})
    report = check_window(rows, challenger, calibration_and_latency, scored=scored)
    statuses = evaluate_slos(slos, report, []) if slos is not None else []
    return report, [s for s in statuses if s.name in (*CANARY_OBJECTIVES, "input_schema", "input_validity")]


def monitor_challenger(client, current: Window, champion: Champion, champion_statuses, *, model: str,
                       tracking_uri: str, checks: ChecksConfig, slos, state_dir: Path, champion_action: str = "none",
                       pushgateway: str | None = None, execute: bool = False, dispatched: bool = False,
                       actor: str = "viops-monitor", trigger: dict | None = None) -> dict | None:
    """Score and judge ``current`` with the challenger deployed live; None when no challenger is live.
    Returns ``{"version", "stage", "window" (the verdict), "decision", "slo", "canary", "metrics", "predictions",
    "incident_id", "executed", "pending"}``."""
    from monitoring.metrics import LABELS, build_registry, export_metrics
    from monitoring.slo import evaluate_slos
    from pipelines.registry.deployment import live_candidate

    deployment = live_candidate(client, model)
    if deployment is None:  # none live (any more): a former challenger's series leave Prometheus
        from monitoring.metrics import retire_group

        retire_group(model, CHALLENGER, pushgateway)
        (state_dir / f"{model}@{CHALLENGER}.prom").unlink(missing_ok=True)
        return None
    challenger = load_champion(client, model, tracking_uri=tracking_uri, alias=CHALLENGER, checks=checks)
    version, policy = challenger.loaded.version, deployment.policy
    state = MonitorState.load(state_dir / f"{model}@{CHALLENGER}.json")
    history = [h for h in state.before(current.key) if h.get("version") == version]
    stored = [c for c in champion.reference_predictions.columns if c in current.frame.columns]
    unscored = dataclasses.replace(current, frame=current.frame.drop(columns=stored))  # never the champion's
    report = check_window(unscored, challenger, checks, WindowContext.from_history(history, version, checks))
    statuses = evaluate_slos(slos, report, [h.get("slo", {}) for h in history]) if slos is not None else []
    nll = paired_nll(champion, challenger, _paired_rows(current, champion, challenger, checks), policy,
                     num_samples=checks.vi_health.predictive_samples, seed=checks.seed)
    canary = None
    if deployment.stage == "canary":
        canary = _canary_slice(unscored, deployment, challenger, checks, slos, report.predictions)
    judged = judge_window(current.key, version, statuses, champion_statuses, nll, policy,
                          canary_statuses=None if canary is None else canary[1],
                          step=deployment.step if canary is not None else None, fraction=deployment.fraction)
    decision = decide_deployment(model, judged, [h["shadow"] for h in history if h.get("shadow")], policy,
                                 champion_action=champion_action)

    registry = build_registry(report, statuses, model=model, alias=CHALLENGER, version=version,
                              window_start=current.start.timestamp() if current.start else None,
                              signature_verified=challenger.loaded.verified)
    values = {"viops_shadow_clean_windows": decision.clean_windows,
              "viops_shadow_nll_difference_nats": None if nll is None else nll.difference,
              "viops_shadow_nll_difference_upper_nats": None if nll is None else nll.upper,
              "viops_canary_fraction_ratio": deployment.fraction}
    from prometheus_client import Gauge

    labels = {"model": model, "alias": CHALLENGER, "version": version}
    for name, value in values.items():
        if value is not None:
            Gauge(name, SHADOW_GAUGES[name], LABELS, registry=registry).labels(**labels).set(value)
    if canary is not None:
        good = Gauge("viops_canary_slo_good", "1 when the canary met the objective on the rows it answered, 0 when "
                     "not (calibration and latency objectives).", (*LABELS, "objective"), registry=registry)
        for status in canary[1]:
            if status.good is not None and status.name in CANARY_OBJECTIVES:
                good.labels(**labels, objective=status.name).set(float(status.good))
    export = export_metrics(registry, grouping_key={"model": model, "alias": CHALLENGER}, pushgateway=pushgateway,
                            textfile=state_dir / f"{model}@{CHALLENGER}.prom")
    written = report.predictions is not None and len(report.predictions) and current.write_shadow(
        report.predictions, f"{model}-v{version}")
    incident = _canary_incident(client, decision, canary, state_dir) if decision.canary_breach else None

    executed = None
    acts = decision.action in ("promote", "reject", "ramp")
    if execute and acts:
        from pipelines.registry.lease import LeaseHeld

        try:
            executed = carry_out(client, decision, policy, actor=actor, trigger={
                **(trigger or {}), "incident_id": incident or (trigger or {}).get("incident_id")})
            if decision.action == "promote":  # the champion moved: its annotation, as `viops promote` pushes it
                from monitoring.events import push_change

                executed = {**executed, "pushed": push_change(executed, pushgateway)}
        except LeaseHeld as exc:  # another promotion, rollback or retrain of the model is under way: next window
            executed = {"action": decision.action, "skipped": True, "reason": str(exc)}
    state.record({"window": current.key, "version": version, "rows": report.inputs.rows,
                  "cusum": report.drift.cusum if report.drift is not None else None,
                  "slo": {s.name: s.good for s in statuses}, "shadow": judged.to_json(), "action": decision.action,
                  "executed": acts and (execute or dispatched), "monitored_at": time.time()})
    return {"version": version, "stage": deployment.stage, "step": deployment.step, "fraction": deployment.fraction,
            "policy": policy.model_dump(), "window": judged.to_json(), "decision": decision.to_json(),
            "audit_evidence": decision.audit_evidence(policy),
            "slo": [{"name": s.name, "status": s.status, "value": s.value, "reason": s.reason} for s in statuses],
            "canary": None if canary is None else {
                "rows": canary[0].inputs.rows, "labelled_rows": canary[0].inputs.labelled_rows,
                "slo": [{"name": s.name, "status": s.status, "value": s.value, "reason": s.reason}
                        for s in canary[1]]},
            "report": report.to_json(), "metrics": export.to_json(), "predictions": written or None,
            "incident_id": incident, "executed": executed,
            "pending": decision.action if acts and not execute and not dispatched else None}


def _canary_incident(client, decision: DeploymentDecision, canary, state_dir: Path) -> str:
    """The incident of a canary breach (runbook ``ViopsCanaryBreach``); its id."""
    from monitoring.decision import incident_id
    from monitoring.incidents import write_incident

    report, statuses = canary
    window = decision.window.window
    record = {"incident_id": incident_id(decision.model, CHALLENGER, window), "model": decision.model,
              "alias": CHALLENGER, "severity": "ticket", "version": decision.version, "window": window,
              "decision": {"action": "rollback", "alert": CANARY_ALERT, "runbook": f"runbooks/{CANARY_ALERT}.md",
                           "reason": decision.reason},
              "slo": [s.to_json() for s in statuses], "report": report.to_json()}
    write_incident(client, record, state_dir, metrics=report.key_metrics())
    return record["incident_id"]


def carry_out(client, decision: DeploymentDecision, policy, *, actor: str, trigger: dict | None = None,
              audit_log=None) -> dict:
    """Ramp, promote or reject the challenger as ``decision`` says, with the live evidence in the audit record. Its
    challenger series stay in the Pushgateway until the next window's run finds no live challenger, so Prometheus
    sees a canary breach (``ViopsCanaryBreach``) before they go."""
    from pipelines.registry.deployment import ramp, reject
    from pipelines.registry.promotion import promote

    evidence = decision.audit_evidence(policy)
    trigger = {**(trigger or {}), "window": decision.window.window}
    if decision.action == "ramp":
        return ramp(client, decision.model, decision.version, decision.next_step)
    if decision.action == "promote":
        outcome = promote(client, decision.model, decision.version, reason=f"live evidence: {decision.reason}",
                          actor=actor, audit_log=audit_log, trigger=trigger, evidence=evidence).to_json()
    else:
        outcome = reject(client, decision.model, decision.version, reasons=decision.rejection_reasons(), actor=actor,
                         evidence=evidence, audit_log=audit_log, trigger=trigger)
    return outcome
