"""The demo's acceptance checks read the per-window rows; each must fail when its story did not happen."""

from __future__ import annotations

from viops.demo.report import acceptance_checks


def _rows(actions: dict[int, str], champions: dict[int, tuple[str, str]]) -> list[dict]:
    return [{"index": i, "action": actions.get(i, "none"),
             "champion_before": champions.get(i, ("1", "1"))[0], "champion_after": champions.get(i, ("1", "1"))[1]}
            for i in range(12)]


GOOD = {"actions": {6: "retrain", 9: "rollback"},
        "champions": {6: ("1", "2"), 7: ("2", "2"), 8: ("2", "2"), 9: ("3", "2"), 10: ("2", "2"), 11: ("2", "2")}}


def test_the_demo_story_passes():
    checks = acceptance_checks(_rows(**GOOD), start=6, bad_before=9, bad_version="3")
    assert [c["ok"] for c in checks] == [True, True, True, True]
    assert "window 6" in checks[1]["what"] and "v1 -> v2" in checks[2]["what"] and "v3 -> v2" in checks[3]["what"]


def test_each_check_fails_on_its_own():
    noisy = _rows({**GOOD["actions"], 2: "page"}, GOOD["champions"])
    assert [c["ok"] for c in acceptance_checks(noisy, start=6, bad_before=9, bad_version="3")] == [False, True, True,
                                                                                                    True]
    late = _rows({8: "retrain", 9: "rollback"}, {8: ("1", "2"), 9: ("3", "2")})
    assert [c["ok"] for c in acceptance_checks(late, start=6, bad_before=9, bad_version="3")][1:3] == [False, False]
    rejected = _rows(GOOD["actions"], {**GOOD["champions"], 6: ("1", "1")})
    assert [c["ok"] for c in acceptance_checks(rejected, start=6, bad_before=9, bad_version="3")][1:3] == [True, False]
    kept = _rows({6: "retrain", 9: "none"}, {**GOOD["champions"], 9: ("3", "3")})
    assert acceptance_checks(kept, start=6, bad_before=9, bad_version="3")[3]["ok"] is False


def test_the_report_links_runbooks_of_the_repository():
    """summary.md links each firing alert to runbooks/<alert>.md of this checkout."""
    from viops.demo.report import REPO

    assert (REPO / "runbooks" / "ViopsDataDrift.md").is_file()
