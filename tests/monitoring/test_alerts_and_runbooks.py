"""Alert rules (generated from the SLOs, checked and unit-tested with promtool) and their runbooks, one to one."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from monitoring.alerts import dump, render_rules
from monitoring.runbooks import load_runbook, load_runbooks
from monitoring.slo import load_slos
from pipelines.config.base import ConfigError
from tests.conftest import REPO, require

ALERTS = REPO / "monitoring" / "prometheus" / "alerts.yml"


def _rules() -> list[dict]:
    """The alerting rules (the recording rules aside)."""
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]
            if "alert" in rule]


def test_alerts_file_is_rendered_from_the_slo_file():
    assert ALERTS.read_text() == dump(render_rules(load_slos(REPO / "configs" / "slo.yaml"))), (
        "monitoring/prometheus/alerts.yml is out of date: "
        "viops alerts --slo configs/slo.yaml --out monitoring/prometheus/alerts.yml")


def test_burn_rate_alerts_follow_the_sre_workbook_for_every_objective():
    slos = load_slos(REPO / "configs" / "slo.yaml")
    page = {r["labels"]["objective"]: r["expr"] for r in _rules() if r["alert"] == "ViopsSLOBurnRatePage"}
    ticket = {r["labels"]["objective"]: r["expr"] for r in _rules() if r["alert"] == "ViopsSLOBurnRateTicket"}
    assert set(page) == set(ticket) == {o.name for o in slos.objectives}
    drift = next(o for o in slos.objectives if o.name == "feature_drift")
    budget = f"{1 - drift.target:g}"
    for window, factor in (("1h", "14.4"), ("5m", "14.4"), ("6h", "6"), ("30m", "6")):
        assert (f'avg_over_time(viops_slo_feature_drift_good{{alias="champion"}}[{window}])) / {budget} > {factor}'
                in page["feature_drift"])
    for window in ("3d", "6h"):
        assert f"[{window}])) / {budget} > 1" in ticket["feature_drift"]


def test_promtool_checks_and_unit_tests_the_rules():
    promtool = shutil.which("promtool")
    require(promtool is not None, "promtool is not installed (Debian package 'prometheus')")
    check = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run([promtool, "test", "rules", str(ALERTS.parent / "tests" / "alerts_test.yml")],
                          capture_output=True, text=True, cwd=REPO)
    assert unit.returncode == 0 and "SUCCESS" in unit.stdout, unit.stdout + unit.stderr


def test_every_alert_has_a_runbook_and_every_runbook_an_alert():
    runbooks = load_runbooks(REPO / "runbooks")
    alerts = {rule["alert"]: rule for rule in _rules()}
    assert set(runbooks) == set(alerts)
    for name, runbook in runbooks.items():
        rule = alerts[name]
        assert runbook.severity == rule["labels"]["severity"], name
        assert rule["annotations"]["runbook"] == f"runbooks/{name}.md"


def test_runbooks_cover_the_failure_modes_and_automate_safely():
    runbooks = load_runbooks(REPO / "runbooks")
    for required in ("ViopsDataDrift", "ViopsCalibrationBreach", "ViopsCalibrationRegressionAfterDeploy",
                     "ViopsElboRegression", "ViopsNanInputs", "ViopsPosteriorCollapse", "ViopsAmortizationGapBudget",
                     "ViopsSLOBurnRatePage", "ViopsMetricsStale"):
        assert required in runbooks, required
    for runbook in runbooks.values():
        if runbook.action == "retrain":  # never retrain on broken or absent data
            assert runbook.preconditions.inputs_valid and runbook.preconditions.min_labelled_rows
        if runbook.action == "rollback":  # only a fresh deploy, and only with somewhere to go back to
            assert runbook.preconditions.previous_champion and runbook.preconditions.promoted_within_windows
    assert runbooks["ViopsNanInputs"].action == "page"
    assert runbooks["ViopsCalibrationRegressionAfterDeploy"].action == "rollback"


@pytest.mark.parametrize("name, text, message", [
    ("ViopsX.md", "# no front matter\n", "no YAML front matter"),
    ("ViopsY.md", "---\nalert: ViopsX\nseverity: page\naction: page\n---\n# t\n## Meaning\n## Impact\n## Diagnosis\n"
                  "## Mitigation\n", "file name must be ViopsX.md"),
    ("ViopsX.md", "---\nalert: ViopsX\nseverity: page\naction: page\n---\n# t\n## Meaning\n", "missing section"),
    ("ViopsX.md", "---\nalert: ViopsX\nseverity: page\naction: reboot\n---\n# t\n", "action"),
])
def test_bad_runbooks_are_clear_errors(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_runbook(tmp_path / name)


def test_an_edited_runbook_is_read_again_and_an_unchanged_one_is_not_parsed_again(tmp_path):
    body = "# t\n## Meaning\n## Impact\n## Diagnosis\n## Mitigation\n"
    path = tmp_path / "ViopsX.md"
    path.write_text(f"---\nalert: ViopsX\nseverity: page\naction: page\n---\n{body}")
    first = load_runbook(path)
    assert load_runbook(path) is first  # the same text: the parsed runbook is reused
    path.write_text(f"---\nalert: ViopsX\nseverity: ticket\naction: retrain\ncooldown: 3\n---\n{body}")
    edited = load_runbook(path)
    assert (edited.severity, edited.action, edited.cooldown) == ("ticket", "retrain", 3)
    path.write_text(f"---\nalert: ViopsX\nseverity: page\naction: reboot\n---\n{body}")
    with pytest.raises(ConfigError, match="action"):  # a broken edit is an error, not the last good parse
        load_runbook(path)
