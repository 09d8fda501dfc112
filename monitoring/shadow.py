"""Shadow deployment: the challenger scored on every live window beside the champion, and promoted on live evidence.

While a challenger is in shadow (:mod:`pipelines.registry.deployment`), ``viops monitor`` also runs the window's
checks for it, against its own reference and held-out baselines, evaluates the SLOs on its results, stores its
predictions in the window's partition (``_shadow/<model>-v<version>.parquet``), and exports its series with
``alias="challenger"``. Each shadow window is judged (:func:`judge_window`):

- **bad**: the challenger breached a model objective, or its predictive NLL on the window's labelled rows is worse
  than the champion's beyond ``deploy.nll_tolerance`` even at the lower confidence bound;
- **clean**: no objective breached, and the upper confidence bound of the paired NLL difference is within the
  tolerance (:class:`PairedNLL`: the same rows scored by both versions, so row-to-row variation cancels);
- **undecided**: too few labelled rows, a bad feed (schema, NaN/inf, volume: nothing is decided on bad data), or
  a difference the window cannot settle.

The challenger is promoted after ``deploy.shadow_windows`` clean windows, with every shadow window's evidence in the
audit record, and rejected at its first bad window or after ``deploy.max_shadow_windows`` without a verdict
(:func:`decide_deployment`). Windows where the champion's own decision is a rollback or retrain hold the verdict.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from statistics import NormalDist

import numpy as np
import pandas as pd

from pipelines.config.release import DeployConfig

__all__ = ["PairedNLL", "ShadowWindow", "DeploymentDecision", "FEED_OBJECTIVES", "CANARY_OBJECTIVES", "paired_nll",
           "judge_window", "decide_deployment"]

#: Objectives about the feed, not the model: a breach makes the window undecided for a challenger, never bad.
FEED_OBJECTIVES = ("input_schema", "input_validity", "volume", "feed_rows")


@dataclass(frozen=True)
class PairedNLL:
    """Challenger minus champion predictive NLL per row on the same labelled rows, with its uncertainty.

    Attributes:
        difference: the mean per-row difference (nats; positive: the challenger fits worse).
        standard_error: its standard error, ``sd(d) / sqrt(rows)``.
        lower / upper: the one-sided ``confidence`` bounds ``difference -/+ z * standard_error``.
    """

    rows: int
    champion: float
    challenger: float
    difference: float
    standard_error: float
    lower: float
    upper: float
    tolerance: float
    confidence: float

    @classmethod
    def of(cls, champion_nll: np.ndarray, challenger_nll: np.ndarray, *, tolerance: float,
           confidence: float) -> PairedNLL:
        d = np.asarray(challenger_nll, dtype=float) - np.asarray(champion_nll, dtype=float)
        n = len(d)
        se = float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else math.inf
        z = NormalDist().inv_cdf(confidence)
        mean = float(d.mean())
        return cls(n, float(np.mean(champion_nll)), float(np.mean(challenger_nll)), mean, se, mean - z * se,
                   mean + z * se, tolerance, confidence)

    @property
    def verdict(self) -> str:
        """``not_worse`` (upper bound within the tolerance), ``worse`` (lower bound beyond it) or ``undecided``."""
        if self.upper <= self.tolerance:
            return "not_worse"
        return "worse" if self.lower > self.tolerance else "undecided"

    def describe(self) -> str:
        return (f"NLL challenger - champion {self.difference:+.4f} ± {self.standard_error:.4f} nats/row on "
                f"{self.rows} rows ({self.confidence:.0%} bounds {self.lower:+.4f}..{self.upper:+.4f}; tolerance "
                f"{self.tolerance:g})")


def paired_nll(champion, challenger, rows: pd.DataFrame, policy: DeployConfig, *, num_samples: int,
               seed: int) -> PairedNLL | None:
    """The paired NLL comparison of two loaded versions (:class:`~monitoring.checks.champion.Champion`) on the same
    valid labelled ``rows``; None with fewer than ``policy.min_labelled_rows`` of them."""
    from pipelines.serving.predictive_metrics import pointwise_nll

    if len(rows) < policy.min_labelled_rows:
        return None
    nll = [pointwise_nll(v.loaded.predictor, rows, num_samples=num_samples, seed=seed) for v in (champion, challenger)]
    return PairedNLL.of(*nll, tolerance=policy.nll_tolerance, confidence=policy.confidence)


@dataclass(frozen=True)
class ShadowWindow:
    """One window's verdict on a live challenger: ``clean``, ``bad`` or ``undecided``, and why.

    Attributes:
        step / fraction: the canary's ramp step and the share of rows it answered (None and 0 in shadow).
        canary_breached: objectives the candidate breached on the rows it answered (a canary breach).
    """

    window: str
    version: str
    outcome: str
    reasons: list[str]
    breached: list[str] = field(default_factory=list)
    nll: PairedNLL | None = None
    step: int | None = None
    fraction: float = 0.0
    canary_breached: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {**asdict(self), "nll": None if self.nll is None else asdict(self.nll)}


#: Objectives whose breach on the canary's own rows rolls the canary back: calibration and latency.
CANARY_OBJECTIVES = ("coverage_90", "coverage_regression", "ece", "scoring_latency")


def judge_window(window: str, version: str, challenger_statuses, champion_statuses, nll: PairedNLL | None,
                 policy: DeployConfig, *, canary_statuses=None, step: int | None = None,
                 fraction: float = 0.0) -> ShadowWindow:
    """The window's verdict on the challenger from its SLO statuses on the whole window, the champion's, the paired
    NLL, and (canary) its statuses on the rows it answered (``canary_statuses``)."""
    breached = [s.name for s in challenger_statuses if s.status == "breach"]

    def verdict(outcome: str, reasons: list[str], canary: list[str] | None = None) -> ShadowWindow:
        return ShadowWindow(window, version, outcome, reasons, breached, nll, step, fraction, canary or [])

    feed = sorted({s.name for s in [*challenger_statuses, *champion_statuses, *(canary_statuses or [])]
                   if s.status == "breach" and s.name in FEED_OBJECTIVES})
    if feed:
        return verdict("undecided", [f"the window's feed is bad ({', '.join(feed)}): nothing is decided on bad data"])
    canary = [st for st in canary_statuses or [] if st.status == "breach" and st.name in CANARY_OBJECTIVES]
    if canary:
        return verdict("bad", [f"canary breach at {fraction:.0%} of the traffic: {st.name} on the rows it answered: "
                               f"{st.reason.split(';')[0]}" for st in canary], [st.name for st in canary])
    model = [st for st in challenger_statuses if st.status == "breach"]
    if model:
        return verdict("bad", [f"challenger breached {st.name}: {st.reason.split(';')[0]}" for st in model])
    if nll is None:
        return verdict("undecided", [f"fewer than {policy.min_labelled_rows} labelled rows: no NLL comparison"])
    if nll.verdict == "worse":
        return verdict("bad", [f"fits worse than the champion: {nll.describe()}"])
    if nll.verdict == "undecided":
        return verdict("undecided", [f"NLL not settled: {nll.describe()}"])
    return verdict("clean", [f"no objective breached; {nll.describe()}"])


@dataclass(frozen=True)
class DeploymentDecision:
    """What happens to the challenger after this window: ``promote``, ``ramp`` (a canary to its next step),
    ``reject``, ``continue`` or ``hold``.

    Attributes:
        evidence: every live window of this version so far (this one last), as recorded.
        next_step: the ramp step a ``ramp`` moves the canary to.
    """

    action: str
    model: str
    version: str
    reason: str
    clean_windows: int
    windows: int
    evidence: list[dict]
    window: ShadowWindow
    next_step: int | None = None

    @property
    def canary_breach(self) -> bool:
        return bool(self.window.canary_breached) and self.action == "reject"

    def rejection_reasons(self) -> list[str]:
        """Why the challenger is turned away: the bad windows' reasons, else the decision's own."""
        return [r for e in self.evidence if e["outcome"] == "bad" for r in e["reasons"]] or [self.reason]

    def to_json(self) -> dict:
        return {"action": self.action, "model": self.model, "version": self.version, "reason": self.reason,
                "clean_windows": self.clean_windows, "windows": self.windows, "evidence": self.evidence,
                "window": self.window.to_json(), "rejection_reasons": self.rejection_reasons(),
                "next_step": self.next_step, "canary_breach": self.canary_breach}

    def audit_evidence(self, policy: DeployConfig) -> dict:
        """What the promotion's or rejection's audit record keeps: the policy and each live window's verdict."""
        return {"policy": policy.model_dump(), "clean_windows": self.clean_windows, "windows": self.windows,
                "shadow": self.evidence}


def decide_deployment(model: str, judged: ShadowWindow, earlier: list[dict], policy: DeployConfig, *,
                      champion_action: str = "none") -> DeploymentDecision:
    """Reject at the first bad window (a canary breach included) or after ``max_shadow_windows`` without enough
    clean ones; otherwise, in shadow, promote after ``shadow_windows`` clean windows; in canary (``judged.step`` set),
    ramp to the next step after ``windows_per_step`` clean windows at this one, and promote after the last.
    ``earlier``: this version's earlier live windows (:meth:`ShadowWindow.to_json`)."""
    evidence = [*earlier, judged.to_json()]
    clean = sum(1 for e in evidence if e["outcome"] == "clean")
    windows = len(evidence)

    def decision(action: str, reason: str, next_step: int | None = None) -> DeploymentDecision:
        return DeploymentDecision(action, model, judged.version, reason, clean, windows, evidence, judged, next_step)

    bad = next((e for e in evidence if e["outcome"] == "bad"), None)  # a pending rejection stays a rejection
    if bad is not None:
        stage = "in shadow" if bad.get("step") is None else "in canary"
        what = "canary rolled back" if bad.get("canary_breached") else f"rejected {stage}"
        return decision("reject", f"{what} on window {bad['window']}: " + "; ".join(bad["reasons"]))
    if champion_action in ("rollback", "retrain"):
        return decision("hold", f"{clean} clean live windows after {windows}; held: the champion's {champion_action} "
                                f"takes this window")
    if judged.step is None:
        needed, counted, last = policy.shadow_windows, clean, True
    else:
        needed, last = policy.windows_per_step, judged.step == len(policy.steps) - 1
        counted = sum(1 for e in evidence if e["outcome"] == "clean" and e.get("step") == judged.step)
    where = "" if judged.step is None else f" at {judged.fraction:.0%} of the traffic (step {judged.step})"
    if counted >= needed:
        passed = ", ".join(e["window"] for e in evidence if e["outcome"] == "clean")
        if last:
            return decision("promote", f"passed {clean} clean live windows ({passed}); last{where}: "
                                       + "; ".join(judged.reasons))
        following = judged.step + 1
        return decision("ramp", f"{counted} clean window(s){where}: ramp to {policy.steps[following]:.0%}",
                        following)
    summary = f"{counted} of {needed} clean windows{where or ' in shadow'} after {windows}"
    if windows >= policy.max_shadow_windows:
        return decision("reject", f"{summary}: max_shadow_windows {policy.max_shadow_windows} reached without "
                                  f"enough live evidence")
    return decision("continue", f"{summary} ({judged.outcome}: {'; '.join(judged.reasons)})")
