"""``viops monitor`` on the classifier's simulated scenarios against a real MLflow server: quiet when stable, a
retrain on concept and covariate shift, pages on a NaN burst, a rollback of a bad deploy. Its own module, so that
it runs beside the regression scenarios (tests/integration/test_monitor_scenarios.py) on another test worker."""

from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient

from pipelines.config.loading import load_config, parse_overrides
from pipelines.lifecycle.train import train
from pipelines.registry.promotion import promote
from tests.conftest import REPO
from tests.integration.test_monitor_scenarios import _simulate
from viops.cli import main

pytestmark = pytest.mark.integration

#: The shifts and the NaN burst start at window 6; the decisions asserted are those of windows 0-7.
JUDGED = 8


def test_classifier_stable_is_quiet_and_concept_shift_retrains(mlflow_server, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("VIOPS_AUDIT_LOG", str(tmp_path / "audit.jsonl"))
    result = train(load_config(REPO / "configs" / "zoo" / "logistic_breast_cancer.yaml"), tracking_uri=mlflow_server)
    assert "champion" in result.aliases, result.registration
    model = ["--model", result.model_name]

    def monitor(window, state):
        code = main(["monitor", *model, "--window", str(window), "--json", "--state-dir", str(state),
                     "--no-drift-report"])
        out, err = capsys.readouterr()
        assert code == 0, err[-3000:]
        return json.loads(out.strip().splitlines()[-1])

    stable = [monitor(w, tmp_path / "s1") for w in _simulate("breast_cancer_stable", tmp_path / "stable", capsys)]
    assert sum(r["decision"]["action"] == "none" for r in stable) / len(stable) >= 0.95
    assert all(r["calibration"]["ece"] < 0.1 for r in stable)
    shifted = [monitor(w, tmp_path / "s2")
               for w in _simulate("breast_cancer_concept_shift", tmp_path / "cs", capsys)[:JUDGED]]
    actions = [r["decision"]["action"] for r in shifted]
    assert actions[:6] == ["none"] * 6 and "retrain" in actions[6:8], actions
    assert shifted[6]["drift"]["share"] == 0.0  # concept shift: the features did not move, the labels did

    covariate = [monitor(w, tmp_path / "s3")
                 for w in _simulate("breast_cancer_covariate_shift", tmp_path / "cov", capsys)[:JUDGED]]
    actions = [r["decision"]["action"] for r in covariate]
    assert actions[:6] == ["none"] * 6 and "retrain" in actions[6:8] and "page" not in actions, actions
    assert covariate[6]["drift"]["share"] > 0.1

    burst = [monitor(w, tmp_path / "s4")
             for w in _simulate("breast_cancer_nan_burst", tmp_path / "nan", capsys)[:JUDGED]]
    actions = [r["decision"]["action"] for r in burst]
    assert actions[6:8] == ["page", "page"] and "retrain" not in actions, actions

    # A bad version slips into production: rolled back within one window.
    client = MlflowClient(mlflow_server, mlflow_server)
    good = str(result.model_version)
    bad = train(load_config(REPO / "configs" / "zoo" / "logistic_breast_cancer.yaml",
                            parse_overrides(["train.max_epochs=2", "train.seed=5", "guide.precondition=none"])),
                tracking_uri=mlflow_server)  # not started at the Laplace fit: 2 epochs leave it far from converged
    windows = _simulate("breast_cancer_stable", tmp_path / "deploy", capsys)
    assert [monitor(w, tmp_path / "s5")["decision"]["action"] for w in windows[:2]] == ["none", "none"]
    promote(client, result.model_name, str(bad.model_version), reason="pytest: a bad deploy", actor="pytest",
            force=True)
    code = main(["monitor", *model, "--window", str(windows[2]), "--json", "--state-dir", str(tmp_path / "s5"),
                 "--no-drift-report", "--execute"])
    rolled = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and rolled["decision"]["action"] == "rollback", rolled["decision"]
    assert str(client.get_model_version_by_alias(result.model_name, "champion").version) == good
