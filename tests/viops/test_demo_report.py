"""The demo's acceptance checks read the per-window rows; each must fail when its story did not happen."""

from __future__ import annotations

from viops.demo.report import acceptance_checks


def _rows(actions: dict[int, str], champions: dict[int, tuple[str, str]], deploy: dict[int, dict] | None = None
          ) -> list[dict]:
    rows = [{"index": i, "action": actions.get(i, "none"), "deploy": (deploy or {}).get(i),
             "champion_before": champions.get(i, ("1", "1"))[0], "champion_after": champions.get(i, ("1", "1"))[1]}
            for i in range(12)]
    for row in rows:
        if row["action"] == "retrain":
            row["retrain"] = {"outcome": "deployed live", "model_version": "2"}
    return rows


# v2 retrained at w6 goes to shadow, promoted at w8; bad v3 forced before w9, rolled back; shuffled v4 rejected at w10.
GOOD = {"actions": {6: "retrain", 9: "rollback"},
        "champions": {6: ("1", "1"), 7: ("1", "1"), 8: ("1", "2"), 9: ("3", "2"), 10: ("2", "2"), 11: ("2", "2")},
        "deploy": {7: {"version": "2", "action": "continue", "clean_windows": 1, "nll_difference": -1.9},
                   8: {"version": "2", "action": "promote", "clean_windows": 2, "nll_difference": -2.0},
                   10: {"version": "4", "action": "reject", "clean_windows": 0, "nll_difference": 0.4}}}
STORY = {"start": 6, "bad_before": 9, "bad_version": "3", "shuffled_before": 10, "shuffled_version": "4"}


def test_the_demo_story_passes():
    checks = acceptance_checks(_rows(**GOOD), **STORY)
    assert [c["ok"] for c in checks] == [True] * 5
    assert "window 6" in checks[1]["what"] and "v2 after 2 clean shadow windows, window 8" in checks[2]["what"]
    assert "v3 -> v2" in checks[3]["what"] and "window 10: NLL +0.40 nats/row" in checks[4]["what"]


def test_each_check_fails_on_its_own():
    noisy = _rows({**GOOD["actions"], 2: "page"}, GOOD["champions"], GOOD["deploy"])
    assert [c["ok"] for c in acceptance_checks(noisy, **STORY)] == [False, True, True, True, True]
    late = _rows({8: "retrain", 9: "rollback"}, GOOD["champions"], GOOD["deploy"])
    assert [c["ok"] for c in acceptance_checks(late, **STORY)][1:3] == [False, False]
    # Promoted at once, without its shadow windows: not what the policy says.
    at_once = _rows(GOOD["actions"], {**GOOD["champions"], 6: ("1", "2")}, GOOD["deploy"])
    assert [c["ok"] for c in acceptance_checks(at_once, **STORY)][1:3] == [True, False]
    kept = _rows({6: "retrain", 9: "none"}, {**GOOD["champions"], 9: ("3", "3")}, GOOD["deploy"])
    assert acceptance_checks(kept, **STORY)[3]["ok"] is False
    shuffled_won = _rows(GOOD["actions"], {**GOOD["champions"], 11: ("2", "4")},
                         {**GOOD["deploy"], 10: {**GOOD["deploy"][10], "action": "continue"}})
    assert acceptance_checks(shuffled_won, **STORY)[4]["ok"] is False


def test_the_report_links_runbooks_of_the_repository():
    """summary.md links each firing alert to runbooks/<alert>.md of this checkout."""
    from viops.demo.report import REPO

    assert (REPO / "runbooks" / "ViopsDataDrift.md").is_file()
