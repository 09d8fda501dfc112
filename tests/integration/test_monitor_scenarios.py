"""``viops monitor`` on simulated scenarios against a real MLflow server, Evidently and (for one window) a real
Pushgateway: what the issue's acceptance asks of the decisions."""

from __future__ import annotations

import json
import urllib.request
from datetime import datetime, timezone

import pytest
from mlflow import MlflowClient

from pipelines.config.loading import load_config, parse_overrides
from pipelines.lifecycle.train import train
from pipelines.registry.promotion import promote
from tests.conftest import REPO, pushgateway
from viops.cli import main

pytestmark = pytest.mark.integration
SCENARIOS = REPO / "configs" / "scenarios"
MODEL = "blr-diabetes"


@pytest.fixture(scope="module")
def server_model(mlflow_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("monitor")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("VIOPS_AUDIT_LOG", str(root / "audit.jsonl"))
        first = train(load_config(REPO / "configs" / "demo" / "blr_diabetes.yaml"), tracking_uri=mlflow_server)
    assert "champion" in first.aliases, first.registration
    return mlflow_server, root


def _simulate(name: str, out, capsys) -> list:
    assert main(["simulate", "--config", str(SCENARIOS / f"{name}.yaml"), "--out", str(out)]) == 0
    capsys.readouterr()
    return sorted(p / "data.parquet" for p in out.iterdir() if p.name.startswith("window="))


def _monitor(capsys, window, *extra, report: bool = False) -> dict:
    """``viops monitor --json`` on one window; without ``report``, with ``--no-drift-report`` (the decisions do not
    depend on it, and drawing Evidently's HTML costs more than the checks)."""
    flags = [] if report else ["--no-drift-report"]
    code = main(["monitor", "--model", MODEL, "--window", str(window), "--json", *flags, *extra])
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def test_stable_window_output(server_model, capsys, monkeypatch, tmp_path):
    uri, _ = server_model
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    windows = _simulate("diabetes_stable", tmp_path / "w", capsys)
    first = _monitor(capsys, windows[0], report=True)
    assert first["decision"]["action"] == "none" and first["pending"] is None
    assert first["drift_report"] == str(windows[0].parent / "drift_report.html")  # in the window's partition
    assert "<html" in open(first["drift_report"]).read(2000).lower()
    assert {"window", "drift", "calibration", "vi_health", "slo", "decision", "evidence"} <= set(first)
    assert {"share", "weighted_share", "columns"} <= set(first["drift"])
    assert first["slo"][0].keys() >= {"name", "status", "value", "threshold"}
    assert first["evidence"]["drift"] == {"rows": 500, "min_rows": 100, "enough": True}
    assert first["metrics"]["textfile"] and not first["metrics"]["pushed"]
    metrics = open(first["metrics"]["textfile"]).read()
    assert 'viops_decision{alias="champion",model="blr-diabetes",version="1",viops_decision="none"} 1.0' in metrics


def test_covariate_shift_retrains_at_once_and_only_once(server_model, capsys, monkeypatch, tmp_path):
    uri, _ = server_model
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    windows = _simulate("diabetes_covariate_shift", tmp_path / "w", capsys)
    # --dispatched: as in the vi_monitoring DAG, the caller carries the retrain out, so its cooldown starts.
    actions = [_monitor(capsys, w, "--dispatched")["decision"]["action"] for w in windows]
    assert actions[:6] == ["none"] * 6 and "retrain" in actions[6:8], actions
    assert actions.count("retrain") == 1 and "page" not in actions  # the cooldown holds the next windows
    client = MlflowClient(uri, uri)
    experiment = client.get_experiment_by_name("viops-incidents")
    runs = client.search_runs([experiment.experiment_id], "tags.`viops.incident.action` = 'retrain'")
    assert runs and {a.path for a in client.list_artifacts(runs[0].info.run_id, "drift")} == {"drift/report.html"}


def test_nan_burst_pages_and_never_retrains(server_model, capsys, monkeypatch, tmp_path):
    uri, _ = server_model
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    results = [_monitor(capsys, w) for w in _simulate("diabetes_nan_burst", tmp_path / "w", capsys)]
    actions = [r["decision"]["action"] for r in results]
    assert actions[6:8] == ["page", "page"] and "retrain" not in actions, actions
    assert results[6]["decision"]["alert"] == "ViopsNanInputs"


def test_a_bad_promotion_is_rolled_back_within_one_window(server_model, capsys, monkeypatch, tmp_path):
    uri, root = server_model
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("VIOPS_AUDIT_LOG", str(root / "audit.jsonl"))
    monkeypatch.chdir(root)
    client = MlflowClient(uri, uri)
    good = str(client.get_model_version_by_alias(MODEL, "champion").version)
    bad = train(load_config(REPO / "configs" / "demo" / "blr_diabetes.yaml",
                            parse_overrides(["model.noise={fixed: 0.1}", "train.seed=3"])), tracking_uri=uri)
    windows = _simulate("diabetes_stable", tmp_path / "w", capsys)
    state = ["--state-dir", str(tmp_path / "state")]
    for window in windows[:3]:
        assert _monitor(capsys, window, *state)["decision"]["action"] == "none"
    # The bad version slips into production (forced past the gate) before window 3.
    promote(client, MODEL, str(bad.model_version), reason="pytest: a bad deploy", actor="pytest", force=True)
    result = _monitor(capsys, windows[3], *state, "--execute")
    assert result["decision"]["action"] == "rollback", result["decision"]
    assert result["decision"]["alert"] == "ViopsCalibrationRegressionAfterDeploy"
    assert result["executed"]["changed"] and result["executed"]["to_version"] == good
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == good
    assert client.get_model_version(MODEL, str(bad.model_version)).tags["viops.rolled_back"] == "true"
    # The next window is watched on the restored champion, and is quiet.
    assert _monitor(capsys, windows[4], *state)["decision"]["action"] == "none"


def test_metrics_reach_a_real_pushgateway(server_model, capsys, monkeypatch, tmp_path):
    uri, _ = server_model
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pushgateway(tmp_path / "pushgateway.log") as gateway:
        window = _simulate("diabetes_covariate_shift", tmp_path / "w", capsys)[7]
        result = _monitor(capsys, window, "--pushgateway", gateway)
        assert result["metrics"]["pushed"]
        scraped = urllib.request.urlopen(f"{gateway}/metrics", timeout=5).read().decode()
    assert ('viops_slo_feature_drift_good{alias="champion",instance="",job="viops_monitor",model="blr-diabetes"'
            in scraped)
    assert 'viops_feature_drift_share_ratio{alias="champion"' in scraped
    # Which window the values describe (the alert receiver re-monitors it): the 8th hourly window of the scenario.
    start = next(line for line in scraped.splitlines() if line.startswith("viops_window_start_timestamp_seconds{"))
    assert float(start.split()[-1]) == datetime(2026, 1, 1, 7, tzinfo=timezone.utc).timestamp()
