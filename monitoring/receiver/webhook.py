"""The webhook service: authenticate, deduplicate, record with the alerts' runbooks, trigger ``vi_monitoring``."""

from __future__ import annotations

import secrets
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from fastapi import FastAPI, Header, HTTPException
from pydantic import BaseModel, ConfigDict

from monitoring.receiver.airflow_api import AirflowAPI, AirflowUnavailable
from monitoring.receiver.ledger import Ledger, firing_key
from monitoring.runbooks import Runbook, load_runbooks
from monitoring.windows import window_key
from pipelines.workspace import safe_key

__all__ = ["ReceiverSettings", "create_app", "runbook_actions", "Notification"]

#: The alias a triggered run monitors. An alert about a live challenger (alias ``challenger``: ViopsCanaryBreach)
#: is judged by the same run, which also judges the challenger and carries out its rollback.
SERVING_ALIAS = "champion"


class Alert(BaseModel):
    """One alert of Alertmanager's webhook payload (version 4)."""

    model_config = ConfigDict(extra="ignore")
    status: str
    labels: dict[str, str]
    annotations: dict[str, str] = {}
    startsAt: str  # noqa: N815 - Alertmanager's field names
    endsAt: str = ""  # noqa: N815
    fingerprint: str
    generatorURL: str = ""  # noqa: N815


class Notification(BaseModel):
    model_config = ConfigDict(extra="ignore")
    version: str
    status: str
    receiver: str = ""
    groupKey: str = ""  # noqa: N815
    alerts: list[Alert]


@dataclass
class ReceiverSettings:
    token: str
    state_dir: Path
    runbooks_dir: Path
    airflow: AirflowAPI | None  # None: record only (nothing is triggered)
    dag_id: str = "vi_monitoring"


def runbook_actions(alerts: list[str], runbooks: dict[str, Runbook]) -> dict[str, dict]:
    """What each alert's runbook says (its file and ``action``); the decision itself is the monitoring run's, which
    knows the window's preconditions, cooldowns and history. An alert without a runbook asks for a person."""
    return {a: {"runbook": f"runbooks/{a}.md", "action": runbooks[a].action if a in runbooks else "page"}
            for a in sorted(alerts)}


def _window(alert: Alert) -> str | None:
    """The window the alert is about: its ``window_start`` label (threshold alerts) or annotation (burn rates), Unix
    seconds filled in by the rule from ``viops_window_start_timestamp_seconds``, as a window key."""
    raw = (alert.labels.get("window_start") or alert.annotations.get("window_start") or "").strip()
    try:
        return window_key(datetime.fromtimestamp(float(raw), tz=timezone.utc)) if raw else None
    except ValueError:
        return None


def create_app(settings: ReceiverSettings) -> FastAPI:
    """The FastAPI app: ``POST /alerts`` (Alertmanager's webhook), ``GET /alerts`` (what was received),
    ``GET /healthz``."""
    ledger = Ledger(settings.state_dir / "alerts.jsonl")
    runbooks = load_runbooks(settings.runbooks_dir)
    app = FastAPI(title="viops alert receiver", docs_url=None, redoc_url=None)

    def authenticate(authorization: str | None) -> None:
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip(), settings.token):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok", "firings_acted_on": ledger.acted}

    @app.get("/alerts")
    def received(authorization: str | None = Header(None)) -> list[dict]:
        authenticate(authorization)
        return ledger.records()

    @app.post("/alerts")
    def receive(notification: Notification, authorization: str | None = Header(None)) -> dict:
        authenticate(authorization)
        now = time.time()
        with ledger.lock:
            for alert in notification.alerts:
                if alert.status != "firing":
                    ledger.append(_record(alert, notification, now, acted=False))
            fresh = [a for a in notification.alerts
                     if a.status == "firing" and not ledger.seen(firing_key(a.fingerprint, a.startsAt))]
            groups: dict[tuple, list[Alert]] = defaultdict(list)
            for alert in fresh:
                # The serving alias's run judges the window, a live challenger's included (ViopsCanaryBreach).
                groups[(alert.labels.get("model"), SERVING_ALIAS, _window(alert))].append(alert)
            outcomes = []
            for (model, alias, window), alerts in groups.items():
                names = sorted({a.labels.get("alertname", "") for a in alerts})
                said = runbook_actions(names, runbooks)
                dag_run, note = None, None
                if model is None or window is None:
                    note = "no model or window on the alert: nothing to re-monitor; follow the runbook"
                elif settings.airflow is None:
                    note = "no Airflow configured: recorded only"
                else:
                    try:
                        dag_run = settings.airflow.trigger(settings.dag_id, _run_id(model, alias, window), {
                            "model": model, "alias": alias, "window": window, "act": True,
                            "alert": {"alerts": names, "runbooks": said,
                                      "fingerprints": sorted(a.fingerprint for a in alerts)}})
                    except AirflowUnavailable as exc:  # Alertmanager retries a 5xx: nothing is marked as done
                        raise HTTPException(503, f"could not trigger {settings.dag_id}: {exc}") from None
                for alert in alerts:
                    name = alert.labels.get("alertname", "")
                    ledger.append({**_record(alert, notification, now, acted=True), "window": window,
                                   "runbook": said[name], "dag_run": dag_run, "note": note})
                outcomes.append({"model": model, "alias": alias, "window": window, "alerts": names,
                                 "runbooks": said, "dag_run": dag_run, "note": note})
        return {"received": len(notification.alerts), "new": len(fresh), "actions": outcomes}

    return app


def _run_id(model: str, alias: str, window: str) -> str:
    """One remediation run per model, alias and window, whichever alerts (and retries) ask for it."""
    return "alert__" + safe_key(f"{model}__{alias}__{window}")


def _record(alert: Alert, notification: Notification, now: float, *, acted: bool) -> dict:
    return {"key": firing_key(alert.fingerprint, alert.startsAt), "fingerprint": alert.fingerprint,
            "starts_at": alert.startsAt, "status": alert.status, "alertname": alert.labels.get("alertname"),
            "labels": alert.labels, "annotations": alert.annotations, "receiver": notification.receiver,
            "received_at": now, "acted": acted}
