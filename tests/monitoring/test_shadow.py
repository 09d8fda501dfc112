"""The shadow policy (monitoring/shadow.py): the paired NLL comparison against its closed form, each window's
verdict, and when a challenger is promoted or rejected."""

from __future__ import annotations

import math

import numpy as np
import pytest

from monitoring.shadow import PairedNLL, decide_deployment, judge_window
from monitoring.slo import SLOStatus
from pipelines.config.base import ConfigError
from pipelines.config.loading import load_config, parse_overrides
from pipelines.config.release import DeployConfig

POLICY = DeployConfig(strategy="shadow", shadow_windows=3, max_shadow_windows=5, nll_tolerance=0.02)


def _status(name: str, status: str = "ok") -> SLOStatus:
    return SLOStatus(name, name, status, 0.0, "", status != "breach", 0, 1, None, None, f"{name} {status}; detail")


def test_paired_difference_matches_its_closed_form_and_is_tighter_than_two_independent_means():
    rng = np.random.default_rng(0)
    champion = rng.gamma(2.0, 2.0, size=400)  # rows differ a lot from each other ...
    challenger = champion + 0.05 + rng.normal(0.0, 0.01, size=400)  # ... the versions by a steady 0.05 nats
    paired = PairedNLL.of(champion, challenger, tolerance=0.02, confidence=0.95)
    d = challenger - champion
    assert paired.difference == pytest.approx(d.mean())
    assert paired.standard_error == pytest.approx(d.std(ddof=1) / math.sqrt(400))
    assert paired.upper == pytest.approx(d.mean() + 1.6448536 * paired.standard_error, rel=1e-6)
    assert paired.verdict == "worse"  # the steady 0.05 > 0.02 is settled ...
    independent_se = math.sqrt(champion.var(ddof=1) / 400 + challenger.var(ddof=1) / 400)
    assert independent_se > 50 * paired.standard_error  # ... where two separate averages could not tell


@pytest.mark.parametrize(("offset", "noise", "verdict"), [(0.0, 0.01, "not_worse"), (0.1, 0.01, "worse"),
                                                           (0.02, 0.5, "undecided")])
def test_the_verdict_reads_the_bounds_against_the_tolerance(offset, noise, verdict):
    rng = np.random.default_rng(1)
    champion = rng.normal(5.0, 1.0, size=200)
    paired = PairedNLL.of(champion, champion + offset + rng.normal(0.0, noise, size=200), tolerance=0.02,
                          confidence=0.95)
    assert paired.verdict == verdict, paired


def _paired(offset: float) -> PairedNLL:
    return PairedNLL(500, 5.0, 5.0 + offset, offset, 0.001, offset - 0.002, offset + 0.002, 0.02, 0.95)


def test_a_window_is_bad_on_a_model_breach_undecided_on_a_bad_feed_and_clean_otherwise():
    ok = [_status("coverage_90"), _status("feature_drift")]
    assert judge_window("w1", "2", ok, ok, _paired(0.0), POLICY).outcome == "clean"
    bad = judge_window("w1", "2", [_status("coverage_90", "breach")], ok, _paired(0.0), POLICY)
    assert bad.outcome == "bad" and bad.reasons == ["challenger breached coverage_90: coverage_90 breach"]
    worse = judge_window("w1", "2", ok, ok, _paired(0.5), POLICY)
    assert worse.outcome == "bad" and "fits worse than the champion" in worse.reasons[0]
    # NaN inputs breach input_validity for both versions: the challenger is not to blame, nothing is decided.
    feed = judge_window("w1", "2", [_status("input_validity", "breach"), _status("coverage_90", "breach")],
                        [_status("input_validity", "breach")], _paired(0.5), POLICY)
    assert feed.outcome == "undecided" and "feed is bad (input_validity)" in feed.reasons[0]
    few = judge_window("w1", "2", ok, ok, None, POLICY)
    assert few.outcome == "undecided" and "fewer than 50 labelled rows" in few.reasons[0]


def _run(outcomes: list[str], champion_actions: list[str] | None = None) -> list[str]:
    """The decision after each window of a challenger whose windows come out as ``outcomes``."""
    judged = {"clean": ([], _paired(0.0)), "bad": ([_status("ece", "breach")], _paired(0.0)),
              "undecided": ([], None)}
    evidence, actions = [], []
    for index, outcome in enumerate(outcomes):
        statuses, nll = judged[outcome]
        window = judge_window(f"w{index}", "2", statuses, [], nll, POLICY)
        action = (champion_actions or ["none"] * len(outcomes))[index]
        decision = decide_deployment("m", window, evidence, POLICY, champion_action=action)
        evidence = decision.evidence
        actions.append(decision.action)
    return actions


def test_promoted_after_exactly_n_clean_windows_and_undecided_ones_do_not_count():
    assert _run(["clean", "clean", "clean"]) == ["continue", "continue", "promote"]
    assert _run(["clean", "undecided", "clean", "clean"]) == ["continue", "continue", "continue", "promote"]


def test_rejected_at_the_first_bad_window_and_a_pending_rejection_stays_one():
    assert _run(["clean", "bad", "clean"]) == ["continue", "reject", "reject"]


def test_held_while_the_champion_is_rolled_back_and_rejected_without_evidence_after_the_maximum():
    assert _run(["clean", "clean", "clean"], ["none", "none", "rollback"]) == ["continue", "continue", "hold"]
    assert _run(["undecided"] * 5) == ["continue"] * 4 + ["reject"]
    window = judge_window("w9", "2", [], [], None, POLICY)
    last = decide_deployment("m", window, [{"window": f"w{i}", "outcome": "undecided", "reasons": ["few"]}
                                           for i in range(4)], POLICY)
    assert "max_shadow_windows 5 reached" in last.reason and last.rejection_reasons() == [last.reason]


def test_the_deploy_section_is_validated_with_the_file_and_key(example_dir):
    config = load_config(example_dir / "blr_csv.yaml", parse_overrides(["deploy.strategy=shadow"]))
    assert config.deploy.strategy == "shadow" and config.deploy.shadow_windows == 3
    with pytest.raises(ConfigError, match="deploy"):
        load_config(example_dir / "blr_csv.yaml", parse_overrides(["deploy.strategy=canary-ish"]))
    with pytest.raises(ConfigError, match="max_shadow_windows"):
        load_config(example_dir / "blr_csv.yaml", parse_overrides(["deploy.shadow_windows=5",
                                                                   "deploy.max_shadow_windows=2"]))


CANARY = DeployConfig(strategy="canary", canary_fraction=0.1, ramp=[0.5, 1.0], windows_per_step=1)


def test_a_clean_canary_ramps_step_by_step_then_is_promoted():
    evidence, actions = [], []
    for step, fraction in enumerate(CANARY.steps):
        window = judge_window(f"w{step}", "2", [], [], _paired(0.0), CANARY, canary_statuses=[_status("coverage_90")],
                              step=step, fraction=fraction)
        decision = decide_deployment("m", window, evidence, CANARY)
        evidence = decision.evidence
        actions.append((decision.action, decision.next_step))
    assert actions == [("ramp", 1), ("ramp", 2), ("promote", None)]


def test_a_canary_that_breaks_calibration_on_its_rows_is_rolled_back_at_once():
    window = judge_window("w0", "2", [], [], _paired(0.0), CANARY, step=0, fraction=0.1,
                          canary_statuses=[_status("coverage_90", "breach"), _status("scoring_latency")])
    decision = decide_deployment("m", window, [], CANARY)
    assert decision.action == "reject" and decision.canary_breach
    assert decision.reason.startswith("canary rolled back on window w0: canary breach at 10% of the traffic: "
                                      "coverage_90 on the rows it answered")
    # A bad feed is nobody's fault: the same breach beside NaN inputs decides nothing.
    feed = judge_window("w0", "2", [], [], _paired(0.0), CANARY, step=0, fraction=0.1,
                        canary_statuses=[_status("coverage_90", "breach"), _status("input_validity", "breach")])
    assert feed.outcome == "undecided" and not feed.canary_breached


def test_a_challenger_that_cannot_be_judged_is_reported_and_never_stops_the_champions_window(monkeypatch):
    import monitoring.challenger
    from monitoring.monitor import _challenger_pass
    from pipelines.registry.versions import RegistryError

    def unreadable(*args, **kwargs):
        raise RegistryError("version 4 of m is PENDING_REGISTRATION, not READY")

    monkeypatch.setattr(monitoring.challenger, "monitor_challenger", unreadable)
    reported = _challenger_pass(None)
    assert reported["decision"] is None and "version 4 of m is PENDING_REGISTRATION" in reported["error"]
