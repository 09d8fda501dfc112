"""From SLO statuses and runbook front matter to one action per window, and the incident record that explains it.

Every objective maps to at least one alert (``THRESHOLD_ALERTS`` in :mod:`monitoring.alerts`; a test checks), and
every alert to a runbook whose ``action`` is ``retrain``, ``rollback``, ``page`` or ``ticket``. Rules, in order:

1. An alert fires when one of its objectives breached in this window. No firing alert: action ``none``.
2. **Bad data blocks automation**: while ``ViopsInputSchema`` or ``ViopsNanInputs`` fires, the action is ``page``,
   whatever else fires.
   Nothing is retrained, promoted or rolled back on a window with NaN/inf inputs.
3. Each firing alert's runbook proposes its ``action``:
   - a ``retrain`` or ``rollback`` whose ``preconditions`` do not all hold is not eligible (the reason says which
     one failed); the alert then asks for a person at its runbook's ``severity`` (``ticket`` or ``page``);
   - one inside its runbook's ``cooldown`` (the same action, from any runbook, was **executed** fewer than
     ``cooldown`` windows ago) is suppressed, and the reason says so: the earlier action is still taking effect.
     A decided action that nobody carried out is *pending* and starts no cooldown;
   - a ``ticket`` becomes a ``page`` once the alert has fired in ``page_after_windows`` windows in a row.
4. The strongest action wins: ``rollback``, ``retrain``, ``page``, ``ticket``. While an executed action is under
   way (another firing alert is in cooldown), tickets and calls for a person that only stand in for a blocked
   action are held, and the reason says so; a page that a runbook asks for is not.

   An alert whose runbook requires a recent promotion (``promoted_within_windows``) does not apply to an older
   champion (or one whose promotion time is unknown), just as its Prometheus rule does not fire.

The reason is built from the same SLO statuses as the SLO list: it names exactly the objectives that breached
(:attr:`Decision.breached`), then what was done about each firing alert.

:class:`MonitorState` keeps, per model and alias, each window's SLO results (the burn-rate history), row count,
slow-drift CUSUM, firing alerts and actions (with whether they were executed). Writing a window again replaces its
entry, so a re-run of the same window neither double-counts nor acts twice.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from monitoring.alerts import THRESHOLD_ALERTS
from monitoring.runbooks import Runbook
from pipelines.workspace import replacing

__all__ = ["Decision", "MonitorState", "decide", "firing_alerts", "incident_id"]

AUTOMATED = ("rollback", "retrain")
#: Strongest first.
PRIORITY = ("rollback", "retrain", "page", "ticket", "none")


@dataclass
class Decision:
    action: str  # none | ticket | page | retrain | rollback
    runbook: str | None
    alert: str | None
    reason: str
    firing: list[str] = field(default_factory=list)
    considered: list[dict] = field(default_factory=list)
    breached: list[str] = field(default_factory=list)  # objectives that breached in this window (as in the SLO list)
    severity: str = "none"  # none | ticket | page

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class MonitorState:
    """``{"windows": [{"window", "version", "rows", "cusum", "slo": {objective: good}, "firing", "action",
    "executed", "runbook", "monitored_at"}]}``, oldest first."""

    path: Path
    windows: list[dict] = field(default_factory=list)

    @classmethod
    def load(cls, path: str | Path) -> MonitorState:
        path = Path(path)
        if not path.exists():
            return cls(path)
        return cls(path, json.loads(path.read_text()).get("windows", []))

    def before(self, window: str) -> list[dict]:
        """Entries of the windows before ``window`` (a re-run sees the same history as the first run)."""
        return [w for w in self.windows if w["window"] < window]

    def record(self, entry: dict) -> None:
        self.windows = sorted([w for w in self.windows if w["window"] != entry["window"]] + [entry],
                              key=lambda w: w["window"])
        with replacing(self.path) as partial:
            partial.write_text(json.dumps({"windows": self.windows}, indent=1))


def windows_since_promotion(history: list[dict], promoted_at: float | None) -> int | None:
    """Windows monitored since the champion's alias last changed (the registry's promotion time), this one included;
    None when unknown: no promotion time, or no window of the history was monitored before it (so the windows in
    between are not known)."""
    if promoted_at is None:
        return None
    times = [h.get("monitored_at") for h in history]
    if not any(t is not None and t < promoted_at for t in times):
        return None
    return 1 + sum(1 for t in times if t is not None and t >= promoted_at)


def incident_id(model: str, alias: str, window: str) -> str:
    """Stable per model, alias and window: re-running the monitor on a window finds its incident again."""
    return hashlib.sha256(f"{model}|{alias}|{window}".encode()).hexdigest()[:12]


def firing_alerts(statuses) -> list[str]:
    breached = {s.name for s in statuses if s.status == "breach"}
    return [alert for alert, (objectives, *_rest) in THRESHOLD_ALERTS.items() if breached & set(objectives)]


def _precondition_failures(runbook: Runbook, facts: dict) -> list[str]:
    p = runbook.preconditions
    failures = []
    if p.min_labelled_rows is not None and facts["labelled_rows"] < p.min_labelled_rows:
        failures.append(f"{facts['labelled_rows']} labelled rows < min_labelled_rows {p.min_labelled_rows}")
    if p.inputs_valid and facts["nonfinite_values"] > 0:
        failures.append(f"inputs are not valid ({facts['nonfinite_values']} NaN/inf values)")
    if p.previous_champion and not facts["has_previous_champion"]:
        failures.append("no previous-champion to roll back to")
    return failures


def _cooldown(runbook: Runbook, history: list[dict]) -> str | None:
    recent = history[-(runbook.cooldown - 1):] if runbook.cooldown > 1 else []
    for back, entry in enumerate(reversed(recent), start=1):
        if entry.get("action") == runbook.action and entry.get("executed", True):
            return (f"cooldown: {entry['action']} (by {entry.get('runbook')}) executed {back} window(s) ago; "
                    f"{runbook.alert} waits {runbook.cooldown} windows")
    return None


def _fired_in_a_row(alert: str, history: list[dict]) -> int:
    """Windows in a row, this one included, in which ``alert`` fired."""
    run = 1
    for entry in reversed(history):
        if alert not in entry.get("firing", []):
            break
        run += 1
    return run


def _objectives_text(statuses) -> tuple[list[str], str]:
    breached = [s for s in statuses if s.status == "breach"]
    if not breached:
        missing = [s.reason for s in statuses if s.status == "no_data" and "its check needs" in s.reason]
        return [], "no objective breached" + (f" (too little evidence: {'; '.join(missing)})" if missing else "")
    return [s.name for s in breached], "breached: " + "; ".join(s.reason.split(";")[0] for s in breached)


def _consider(alert: str, runbook: Runbook | None, facts: dict, history: list[dict]) -> dict:
    """What ``alert``'s runbook does on this window: ``{"alert", "action", "outcome", "under_way"?}``."""
    if runbook is None:  # the alert<->runbook test keeps this from happening; be safe if it does
        return {"alert": alert, "action": "page", "outcome": f"{alert} has no runbook: a person decides"}
    if runbook.action in AUTOMATED:
        since, fresh = facts["windows_since_promotion"], runbook.preconditions.promoted_within_windows
        if fresh is not None and (since is None or since > fresh):
            # As in the Prometheus rule: an "after deploy" alert does not apply to an old champion.
            when = "at an unknown time" if since is None else f"{since} windows ago"
            return {"alert": alert, "action": "none", "outcome": f"does not apply: the champion was promoted {when}, "
                    f"not within {fresh} windows", "not_applicable": True}
        failures = _precondition_failures(runbook, facts)
        if failures:
            return {"alert": alert, "action": runbook.severity, "blocked": True,
                    "outcome": f"would {runbook.action}, but " + "; ".join(failures)
                    + f": asks for a person ({runbook.severity})"}
        cooling = _cooldown(runbook, history)
        if cooling:
            return {"alert": alert, "action": "none", "outcome": f"suppressed by {cooling}", "under_way": True}
        return {"alert": alert, "action": runbook.action, "outcome": "its runbook's preconditions hold"}
    action = runbook.action
    if action == "ticket" and runbook.page_after_windows is not None:
        run = _fired_in_a_row(alert, history)
        if run >= runbook.page_after_windows:
            return {"alert": alert, "action": "page", "outcome": f"fired {run} windows in a row "
                    f"(page_after_windows {runbook.page_after_windows}): escalated to a page"}
    return {"alert": alert, "action": action, "outcome": f"its runbook asks for a {action}"}


#: Alerts that say the window's inputs are bad: while one fires, the action is a page and nothing is automated.
BAD_DATA_ALERTS = {"ViopsInputSchema": "inputs break the training schema", "ViopsNanInputs": "NaN/inf inputs"}


def decide(statuses, runbooks: dict[str, Runbook], history: list[dict], facts: dict) -> Decision:
    """One action for this window. ``facts``: ``labelled_rows``, ``nonfinite_values``, ``windows_since_promotion``
    (None when unknown), ``has_previous_champion``."""
    breached, objectives = _objectives_text(statuses)
    firing = firing_alerts(statuses)
    if not firing:
        return Decision("none", None, None, objectives, firing, breached=breached)
    bad_data = next((alert for alert in BAD_DATA_ALERTS if alert in firing), None)
    if bad_data is not None:
        others = [a for a in firing if a != bad_data]
        return Decision("page", f"runbooks/{bad_data}.md", bad_data,
                        f"{objectives}. {BAD_DATA_ALERTS[bad_data]}: no automated change on bad data; a person fixes "
                        f"the feed" + (f" (also firing: {', '.join(others)})" if others else ""), firing,
                        breached=breached, severity="page")
    considered = [_consider(alert, runbooks.get(alert), facts, history) for alert in firing]
    applies = [c for c in considered if not c.get("not_applicable")]
    under_way = any(c.get("under_way") for c in applies)
    # While an executed action is still fixing the trouble, a blocked action's call for a person and the tickets of
    # other alerts wait for it (stated in the reason); a page that a runbook asks for does not.
    held = [c for c in applies if under_way and (c.get("blocked") or c["action"] == "ticket")]
    for c in held:
        c["outcome"] += "; held while an executed action takes effect"
    candidates = [c for c in applies if c["action"] != "none" and c not in held]
    outcomes = "; ".join(f"{c['alert']}: {c['outcome']}" for c in considered)
    if not candidates:
        return Decision("none", None, None, f"{objectives}. {outcomes}", [c["alert"] for c in applies],
                        considered, breached)
    chosen = min(candidates, key=lambda c: PRIORITY.index(c["action"]))
    severity = {"ticket": "ticket", "page": "page"}.get(chosen["action"]) or runbooks[chosen["alert"]].severity
    return Decision(chosen["action"], f"runbooks/{chosen['alert']}.md", chosen["alert"], f"{objectives}. {outcomes}",
                    [c["alert"] for c in applies], considered, breached, severity)
