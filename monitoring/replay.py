"""Replay a window store through the monitor, oldest window first: what ``viops monitor`` decides on each window.

Used to measure the decisions on simulated scenarios (``benchmarks/decision_scenarios.py``, the scenario tests and
the table in docs/monitoring.md). Each replay keeps its own state directory, so burn rates, cooldowns and the
slow-drift CUSUM build up exactly as they do in production. ``dispatched`` records decided retrains/rollbacks as
carried out by a caller (as the vi_monitoring DAG does) without changing the registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from monitoring.windows import WindowStore

__all__ = ["WindowDecision", "replay", "first_action"]


@dataclass(frozen=True)
class WindowDecision:
    index: int
    window: str
    action: str
    alert: str | None
    breached: tuple[str, ...]
    reason: str
    rows: int
    weighted_share: float | None
    cusum: float | None


def replay(client, *, model: str, store: str | Path, tracking_uri: str, state_dir: str | Path, checks=None,
           slos=None, runbooks=None, dispatched: bool = True, textfile: str | Path | None = None,
           drift_report: bool = False) -> list[WindowDecision]:
    """Monitor every window of ``store`` in time order; returns one :class:`WindowDecision` per window. A replay
    measures decisions, so it writes no per-window drift report unless ``drift_report`` asks for them."""
    from monitoring.monitor import run_monitor

    store = WindowStore(store)
    out = []
    for index, when in enumerate(store.windows()):
        body = run_monitor(client, model=model, window_path=store.path(when), tracking_uri=tracking_uri,
                           checks=checks, slos=slos, runbooks=runbooks, state_dir=state_dir, dispatched=dispatched,
                           textfile=textfile, drift_report=drift_report)
        decision, drift = body["decision"], body.get("drift") or {}
        out.append(WindowDecision(index, body["window"], decision["action"], decision["alert"],
                                  tuple(decision["breached"]), decision["reason"], body["inputs"]["rows"],
                                  drift.get("weighted_share"), drift.get("cusum")))
    return out


def first_action(decisions: list[WindowDecision], actions: tuple[str, ...] = ("retrain", "rollback", "page",
                                                                               "ticket")) -> WindowDecision | None:
    """The first window whose decision is one of ``actions``, or None."""
    return next((d for d in decisions if d.action in actions), None)
