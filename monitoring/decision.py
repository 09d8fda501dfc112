"""From SLO statuses and runbook front matter to one action per window, and the incident record that explains it.

Rules, in order:

1. An alert fires when one of its objectives breached in this window (``THRESHOLD_ALERTS`` in
   :mod:`monitoring.alerts`). No firing alert: action ``none``.
2. **Bad data blocks automation**: while ``ViopsNanInputs`` fires, the action is ``page``, whatever else fires.
   Nothing is retrained, promoted or rolled back on a window with NaN/inf inputs.
3. Each firing alert's runbook proposes its ``action``:
   - a ``retrain`` or ``rollback`` whose ``preconditions`` do not all hold is not eligible (the reason says which
     one failed);
   - one inside its runbook's ``cooldown`` (the same action, from any runbook, ran fewer than ``cooldown`` windows
     ago) is not eligible either: the earlier action is still taking effect. A rollback is not held back by a
     recent retrain, or the other way round.
4. The eligible automated action with the highest priority wins: ``rollback`` before ``retrain``.
5. With no eligible automated action:
   - ``page`` when a firing alert asks for a person, or when an automated action was blocked by its preconditions
     and no action is under way;
   - ``none`` when the blocks are cooldowns (an action is under way) or the alerts need no action.

   An alert whose runbook requires a recent promotion (``promoted_within_windows``) does not apply to an older
   champion, just as its Prometheus rule does not fire.

:class:`MonitorState` keeps, per model and alias, each window's SLO results (the burn-rate history) and actions
(the cooldowns). Writing a window again replaces its entry, so a re-run of the same window neither double-counts nor
acts twice.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from monitoring.alerts import THRESHOLD_ALERTS
from monitoring.runbooks import Runbook

__all__ = ["Decision", "MonitorState", "decide", "firing_alerts", "incident_id"]

AUTOMATED = ("rollback", "retrain")


@dataclass
class Decision:
    action: str  # none | retrain | rollback | page
    runbook: str | None
    alert: str | None
    reason: str
    firing: list[str] = field(default_factory=list)
    considered: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class MonitorState:
    """``{"windows": [{"window", "version", "slo": {objective: good}, "action", "runbook"}]}``, oldest first."""

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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".partial")
        partial.write_text(json.dumps({"windows": self.windows}, indent=1))
        os.replace(partial, self.path)


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
    if p.promoted_within_windows is not None:
        since = facts["windows_since_promotion"]
        if since is None or since > p.promoted_within_windows:
            failures.append(f"champion promoted {'an unknown number of' if since is None else since} windows ago "
                            f"> promoted_within_windows {p.promoted_within_windows}")
    if p.previous_champion and not facts["has_previous_champion"]:
        failures.append("no previous-champion to roll back to")
    return failures


def _cooldown(runbook: Runbook, history: list[dict]) -> str | None:
    recent = history[-(runbook.cooldown - 1):] if runbook.cooldown > 1 else []
    for back, entry in enumerate(reversed(recent), start=1):
        if entry.get("action") == runbook.action:
            return (f"cooldown: {entry['action']} (by {entry.get('runbook')}) {back} window(s) ago; "
                    f"{runbook.alert} waits {runbook.cooldown} windows")
    return None


def decide(statuses, runbooks: dict[str, Runbook], history: list[dict], facts: dict) -> Decision:
    """One action for this window. ``facts``: ``labelled_rows``, ``nonfinite_values``, ``windows_since_promotion``
    (None when unknown), ``has_previous_champion``."""
    firing = firing_alerts(statuses)
    if not firing:
        return Decision("none", None, None, "no objective breached in this window", firing)
    if "ViopsNanInputs" in firing:
        others = [a for a in firing if a != "ViopsNanInputs"]
        return Decision("page", "runbooks/ViopsNanInputs.md", "ViopsNanInputs",
                        "NaN/inf inputs: no automated change on bad data; a person fixes the feed"
                        + (f" (also firing: {', '.join(others)})" if others else ""), firing)
    considered, eligible, blocked, wants_person, cooling_down = [], [], [], [], []
    not_applicable: set[str] = set()
    for alert in firing:
        runbook = runbooks.get(alert)
        if runbook is None:  # the alert<->runbook test keeps this from happening; be safe if it does
            wants_person.append((alert, f"{alert} has no runbook"))
            considered.append({"alert": alert, "action": "page", "outcome": "no runbook"})
            continue
        if runbook.action in AUTOMATED:
            failures = _precondition_failures(runbook, facts)
            cooling = _cooldown(runbook, history)
            since, fresh = facts["windows_since_promotion"], runbook.preconditions.promoted_within_windows
            if fresh is not None and (since is None or since > fresh):
                # As in the Prometheus rule: an "after deploy" alert does not apply to an old champion.
                considered.append({"alert": alert, "action": runbook.action,
                                   "outcome": "does not apply: the champion is not a recent deploy"})
                not_applicable.add(alert)
                continue
            if failures:
                blocked.append((alert, f"{alert} would {runbook.action}, but " + "; ".join(failures)))
                considered.append({"alert": alert, "action": runbook.action, "outcome": "; ".join(failures)})
            elif cooling:
                cooling_down.append(cooling)
                considered.append({"alert": alert, "action": runbook.action, "outcome": cooling})
            else:
                eligible.append(runbook)
                considered.append({"alert": alert, "action": runbook.action, "outcome": "eligible"})
        elif runbook.action == "page":
            wants_person.append((alert, f"{alert}: its runbook asks for a person"))
            considered.append({"alert": alert, "action": "page", "outcome": "page"})
        else:
            considered.append({"alert": alert, "action": "none", "outcome": "no automated action"})
    firing = [a for a in firing if a not in not_applicable]
    if not firing:
        return Decision("none", None, None, "no alert applies: " + "; ".join(c["outcome"] for c in considered),
                        firing, considered)
    if eligible:
        chosen = min(eligible, key=lambda rb: AUTOMATED.index(rb.action))
        others = [a for a in firing if a != chosen.alert]
        return Decision(chosen.action, f"runbooks/{chosen.alert}.md", chosen.alert,
                        f"{chosen.alert} fired and its runbook's preconditions hold"
                        + (f" (also firing: {', '.join(others)})" if others else ""), firing, considered)
    if blocked and cooling_down and not wants_person:
        # An action for this trouble is already under way: wait for it rather than page.
        return Decision("none", None, None, "; ".join(cooling_down), firing, considered)
    if wants_person or blocked:
        alert, why = (wants_person or blocked)[0]
        return Decision("page", f"runbooks/{alert}.md", alert, "; ".join(w for _, w in wants_person + blocked),
                        firing, considered)
    return Decision("none", None, None, "; ".join(c["outcome"] for c in considered) or "nothing to do", firing,
                    considered)
