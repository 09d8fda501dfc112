"""The Grafana dashboards: the shipped JSON is what the code generates, it has the structure Grafana's dashboard
schema requires, and every query is valid PromQL (promtool). tests/integration/test_distributed_profile.py runs
every query against a real Prometheus after a run of the distributed profile."""

import json
import shutil
import subprocess

import yaml

from monitoring.dashboards import ANNOTATIONS, VIEWS, dump, queries, render
from tests.conftest import REPO, require

SHIPPED = REPO / "monitoring" / "grafana" / "dashboards"


def test_the_shipped_dashboards_are_the_generated_ones():
    assert sorted(p.name for p in SHIPPED.glob("*.json")) == sorted(f"{v.uid}.json" for v in VIEWS)
    for view in VIEWS:
        assert (SHIPPED / f"{view.uid}.json").read_text() == dump(view), \
            f"regenerate: viops dashboards --out {SHIPPED.relative_to(REPO)}"


def test_each_dashboard_has_what_grafana_requires():
    for view in VIEWS:
        board = render(view)
        assert board["uid"] == view.uid and board["title"] and board["schemaVersion"] >= 36
        ids = [p["id"] for p in board["panels"]]
        assert len(set(ids)) == len(ids) == len(view.panels)
        cells = set()
        for panel in board["panels"]:
            assert panel["type"] in ("timeseries", "stat", "table") and panel["datasource"] == "${datasource}"
            pos = panel["gridPos"]
            assert pos["x"] + pos["w"] <= 24, panel["title"]
            area = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
            assert not area & cells, f"{panel['title']} overlaps another panel"
            cells |= area
            refs = [t["refId"] for t in panel["targets"]]
            assert refs and len(set(refs)) == len(refs) and all(t["expr"] for t in panel["targets"])
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource" and variables["model"]["includeAll"]
        names = {a["name"] for a in board["annotations"]["list"]}
        assert names == (set(ANNOTATIONS) if view.annotations else set())


def test_every_query_is_valid_promql(tmp_path):
    require(shutil.which("promtool") is not None, "promtool is not installed (Debian package 'prometheus')")
    rules = {"groups": [{"name": view.uid, "rules": [{"record": f"viops:dashboard_query_{i}", "expr": expr}
                                                       for i, (_, expr) in enumerate(queries(view))]}
                        for view in VIEWS]}
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump(rules))
    checked = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_grafana_provisioning_points_at_the_dashboards():
    provider = yaml.safe_load((REPO / "monitoring/grafana/provisioning/dashboards/viops.yaml").read_text())
    assert provider["providers"][0]["type"] == "file"
    source = yaml.safe_load((REPO / "monitoring/grafana/provisioning/datasources/prometheus.yaml").read_text())
    assert source["datasources"][0]["type"] == "prometheus"
    assert all(json.loads((SHIPPED / f"{v.uid}.json").read_text())["uid"] == v.uid for v in VIEWS)


def test_snapshots_break_lines_where_samples_are_missing():
    import math

    from monitoring.dashboard_snapshots import _with_gaps

    times, values = _with_gaps([(0, "1"), (2, "2"), (10, "3")], step=2)
    assert len(times) == 4 and math.isnan(values[2]) and values[3] == 3.0


def test_snapshots_from_an_unreachable_prometheus_fail_in_one_line(tmp_path, capsys):
    from tests.conftest import free_port
    from viops.cli import main

    code = main(["dashboards", "--snapshot", f"http://127.0.0.1:{free_port()}", "--out", str(tmp_path)])
    assert code == 4 and "Connection refused" in capsys.readouterr().err
