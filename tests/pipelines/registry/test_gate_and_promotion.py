"""Gate, promotion, rollback, audit trail and batch scoring on a SQLite MLflow store (the CLI in-process).

Three versions of the example model are trained once for the module: v1 (the first, so the gate's absolute
thresholds decide whether it becomes champion), v2 (as good as v1), v3 (a noise scale fixed 15x too small: over-
confident). Each test sets the aliases it starts from. tests/integration/test_lifecycle_server.py runs the same
story against a real ``mlflow server`` and ``mlflow models serve``.
"""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from mlflow import MlflowClient

from pipelines.config.loading import load_config, parse_overrides
from pipelines.lifecycle.train import train
from pipelines.registry.audit import AUDIT_EXPERIMENT, read_log
from pipelines.registry.gate import EVALUATION_EXPERIMENT
from pipelines.registry.promotion import GateRejected, promote
from pipelines.registry.versions import CHAMPION, MODEL_ID_TAG, PREVIOUS_CHAMPION, alias_version, register_run
from tests.conftest import EXAMPLE_CONFIG, make_regression_csv, mlflow_db
from viops.cli import main
from viops.commands.common import EXIT_BAD_INPUT, EXIT_REJECTED

MODEL = "blr-example"
TRAIN = ["train.max_epochs=60", "train.batch_size=64"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("lifecycle")
    shutil.copy(EXAMPLE_CONFIG, root / "blr.yaml")
    make_regression_csv(root / "data.csv", n=1200)
    uri = mlflow_db(root / "mlflow.db")
    audit = root / "audit.jsonl"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("VIOPS_AUDIT_LOG", str(audit))
        results = [
            train(load_config(root / "blr.yaml", parse_overrides([*TRAIN, *extra])), tracking_uri=uri)
            for extra in ([], ["train.seed=1"], ["model.noise.fixed=0.02"])
        ]
    return {"root": root, "uri": uri, "audit": audit, "runs": results}


@pytest.fixture
def client(store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])
    monkeypatch.setenv("VIOPS_AUDIT_LOG", str(store["audit"]))
    return MlflowClient(tracking_uri=store["uri"], registry_uri=store["uri"])


def _aliases(client, champion: str, previous: str | None = None) -> None:
    """Start a test from a known registry state (writes no audit record: this is test setup, not a change)."""
    client.set_registered_model_alias(MODEL, CHAMPION, champion)
    if previous is None:
        if alias_version(client, MODEL, PREVIOUS_CHAMPION):
            client.delete_registered_model_alias(MODEL, PREVIOUS_CHAMPION)
    else:
        client.set_registered_model_alias(MODEL, PREVIOUS_CHAMPION, previous)


def _cli(capsys, *args) -> tuple[int, dict | None, str]:
    code = main([*args, "--json"])
    out, err = capsys.readouterr()
    lines = [line for line in out.strip().splitlines() if line.strip()]
    return code, (json.loads(lines[-1]) if lines else None), err


def test_first_version_became_champion_through_the_gate(store, client):
    first = store["runs"][0]
    assert first.model_version == "1" and set(first.aliases) == {CHAMPION, "challenger"}
    tags = client.get_model_version(MODEL, "1").tags
    assert tags["viops.gate.passed"] == "true" and tags["viops.gate.against_version"] == ""
    evaluation = client.get_run(tags["viops.gate.evaluation_run_id"])
    assert evaluation.data.tags["viops.verdict"] == "passed"
    assert client.get_experiment(evaluation.info.experiment_id).name == EVALUATION_EXPERIMENT
    assert "champion/nll" not in evaluation.data.metrics  # no champion: absolute thresholds only
    (record,) = [r for r in read_log(store["audit"]) if r["to_version"] == "1" and r["action"] == "promote"]
    assert record["from_version"] is None and record["verdict"]["passed"] is True
    # Later versions were registered as challengers only: training alone never makes a champion.
    assert store["runs"][1].aliases == ("challenger",) and store["runs"][2].aliases == ("challenger",)


def test_good_candidate_passes_and_promotion_moves_both_aliases(store, client, capsys):
    _aliases(client, "1")
    code, verdict, _ = _cli(capsys, "evaluate", "--model", MODEL, "--candidate", "2")
    assert code == 0 and verdict["passed"] and verdict["reasons"] == []
    assert verdict["champion_version"] == "1" and verdict["checks"]["nll_vs_champion"] == "pass"
    for who in ("candidate", "champion"):
        assert set(verdict["metrics"][who]) >= {"nll", "coverage_90", "psis_khat", "latency_p95_ms", "nan_count"}
    assert verdict["data"]["source"].startswith("held-out split of run")

    before = len(read_log(store["audit"]))
    code, change, _ = _cli(capsys, "promote", "--model", MODEL, "--version", "2", "--reason", "pytest: fresh labels")
    assert code == 0 and change["changed"] and change["from_version"] == "1" and change["to_version"] == "2"
    assert alias_version(client, MODEL, CHAMPION) == "2" and alias_version(client, MODEL, PREVIOUS_CHAMPION) == "1"
    tags = client.get_model_version(MODEL, "2").tags
    assert tags["viops.promote.reason"] == "pytest: fresh labels" and tags["viops.promote.by"]
    assert client.get_model_version(MODEL, "1").tags["viops.demotion_reason"].startswith("replaced by version 2")

    # Idempotent: promoting the champion again changes nothing, says so, and writes no second record.
    code, again, _ = _cli(capsys, "promote", "--model", MODEL, "--version", "2")
    assert code == 0 and not again["changed"] and "already champion" in again["message"]
    assert again["event_id"] == change["event_id"]
    records = read_log(store["audit"])
    assert len(records) == before + 1
    assert records[-1]["verdict"]["evaluation_run_id"] == verdict["evaluation_run_id"]
    audit_runs = client.search_runs([client.get_experiment_by_name(AUDIT_EXPERIMENT).experiment_id],
                                    f"tags.`viops.audit.event_id` = '{change['event_id']}'")
    assert len(audit_runs) == 1 and audit_runs[0].data.tags["viops.audit.reason"] == "pytest: fresh labels"


def test_bad_candidate_is_rejected_with_reasons_and_cannot_be_promoted(store, client, capsys):
    _aliases(client, "2", "1")
    code, verdict, err = _cli(capsys, "evaluate", "--model", MODEL, "--candidate", "3")
    assert code == EXIT_REJECTED and not verdict["passed"]
    reasons = " | ".join(verdict["reasons"])
    assert "nll_tolerance" in reasons and "coverage_90" in reasons, reasons
    assert verdict["checks"]["nll_vs_champion"] == "fail" and verdict["checks"]["coverage_90"] == "fail"
    assert "REJECTED" in err
    tags = client.get_model_version(MODEL, "3").tags
    assert tags["viops.gate.passed"] == "false" and "coverage_90" in tags["viops.gate.reasons"]

    with pytest.raises(GateRejected, match="failed the evaluation gate"):
        promote(client, MODEL, "3", reason="try", actor="pytest")
    code, _, err = _cli(capsys, "promote", "--model", MODEL, "--version", "3")  # a negative verdict, not bad input
    assert code == EXIT_REJECTED and "rejected by the gate: version 3" in err and "--force" in err
    assert alias_version(client, MODEL, CHAMPION) == "2" and alias_version(client, MODEL, PREVIOUS_CHAMPION) == "1"


def test_the_champion_is_not_evaluated_against_itself(store, client, capsys):
    _aliases(client, "2", "1")
    code, verdict, err = _cli(capsys, "evaluate", "--model", MODEL, "--candidate", "2")
    assert code == EXIT_BAD_INPUT and verdict is None
    assert "version 2 of blr-example is @champion itself" in err and "--against N" in err
    code, verdict, _ = _cli(capsys, "evaluate", "--model", MODEL, "--candidate", "2", "--against", "1", "--no-log")
    assert code in (0, EXIT_REJECTED) and verdict["champion_version"] == "1"  # an earlier version: a verdict


def test_rollback_restores_the_previous_champion_once(store, client, capsys):
    _aliases(client, "2", "1")
    client.set_registered_model_alias(MODEL, "challenger", "2")  # the version promoted from challenger, gone bad
    before = len(read_log(store["audit"]))
    code, change, _ = _cli(capsys, "rollback", "--model", MODEL, "--reason", "pytest: calibration broke",
                           "--trigger", '{"incident_id": "INC-1"}')
    assert code == 0 and change["changed"] and (change["from_version"], change["to_version"]) == ("2", "1")
    assert alias_version(client, MODEL, CHAMPION) == "1" and alias_version(client, MODEL, PREVIOUS_CHAMPION) is None
    assert alias_version(client, MODEL, "challenger") is None  # a rolled-back version is no candidate any more
    demoted = client.get_model_version(MODEL, "2").tags
    assert demoted["viops.rolled_back"] == "true" and demoted["viops.rollback_reason"] == "pytest: calibration broke"
    assert demoted["viops.rolled_back.incident"] == "INC-1"

    # A retry (an Airflow task re-run) changes nothing and reports the rollback that already happened.
    code, again, _ = _cli(capsys, "rollback", "--model", MODEL, "--reason", "pytest: calibration broke")
    assert code == 0 and not again["changed"] and again["event_id"] == change["event_id"]
    assert alias_version(client, MODEL, CHAMPION) == "1"
    records = read_log(store["audit"])[before:]
    assert [(r["action"], r["from_version"], r["to_version"]) for r in records] == [("rollback", "2", "1")]
    assert records[0]["trigger"] == {"incident_id": "INC-1"} and records[0]["reason"] == "pytest: calibration broke"
    client.set_registered_model_alias(MODEL, "challenger", "3")  # as the module's other tests expect it


def test_rollback_without_a_previous_champion_fails_and_changes_nothing(store, client, capsys):
    solo = "blr-solo"
    reg = register_run(client, store["runs"][0].run_id, solo)
    promote(client, solo, reg.version, reason="only version", actor="pytest")
    code, payload, err = _cli(capsys, "rollback", "--model", solo, "--reason", "pytest")
    assert code == EXIT_BAD_INPUT and payload is None
    assert "no previous-champion to roll back to" in err
    assert alias_version(client, solo, CHAMPION) == reg.version
    code, _, err = _cli(capsys, "rollback", "--model", "no-such-model", "--reason", "pytest")
    assert code == EXIT_BAD_INPUT and "no registered model named 'no-such-model'" in err


def test_a_run_is_registered_through_its_client_whatever_the_process_wide_tracking_uri(store, client, tmp_path):
    import mlflow

    from tests.conftest import mlflow_environment_kept

    with mlflow_environment_kept():
        mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'elsewhere.db'}")  # what another store's caller left set
        try:
            reg = register_run(client, store["runs"][1].run_id, "blr-elsewhere")
        finally:
            mlflow.set_tracking_uri(None)
    version, run = client.get_model_version("blr-elsewhere", reg.version), client.get_run(store["runs"][1].run_id)
    assert version.run_id == run.info.run_id and version.source == f"models:/{run.data.tags[MODEL_ID_TAG]}"


def test_an_audit_record_lost_to_a_crash_is_written_by_the_retry(store, client, monkeypatch):
    _aliases(client, "1")
    import pipelines.registry.audit as audit

    original = audit.write_record
    monkeypatch.setattr(audit, "write_record", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        promote(client, MODEL, "2", reason="pytest: crash", actor="pytest")
    assert alias_version(client, MODEL, CHAMPION) == "2"  # the alias moved; the record did not get written
    event_id = client.get_model_version(MODEL, "2").tags["viops.promote.event_id"]
    assert not [r for r in read_log(store["audit"]) if r["event_id"] == event_id]
    monkeypatch.setattr(audit, "write_record", original)
    retry = promote(client, MODEL, "2", reason="pytest: crash", actor="pytest")
    assert not retry.changed and retry.event_id == event_id
    (record,) = [r for r in read_log(store["audit"]) if r["event_id"] == event_id]
    assert record["reason"] == "pytest: crash" and record["from_version"] == "1"


def test_gate_refuses_bad_data_and_logs_nothing(store, client, capsys, tmp_path):
    _aliases(client, "1")
    runs_before = len(client.search_runs([client.get_experiment_by_name(EVALUATION_EXPERIMENT).experiment_id]))
    tags_before = client.get_model_version(MODEL, "2").tags
    frame = pd.DataFrame({"x0": [0.1, 0.2], "x1": [0.0, 1.0], "y": [1.0, 2.0]})
    frame.to_csv(tmp_path / "window.csv", index=False)
    code, _, err = _cli(capsys, "evaluate", "--model", MODEL, "--candidate", "2", "--data", str(tmp_path / "window.csv"))
    assert code == EXIT_BAD_INPUT and "['x2'] not found" in err and "window.csv" in err
    frame.assign(x2=[0.0, float("nan")]).to_csv(tmp_path / "nan.csv", index=False)
    code, _, err = _cli(capsys, "evaluate", "--model", MODEL, "--candidate", "2", "--data", str(tmp_path / "nan.csv"))
    assert code == EXIT_BAD_INPUT and "column 'x2'" in err and "NaN" in err
    assert len(client.search_runs([client.get_experiment_by_name(EVALUATION_EXPERIMENT).experiment_id])) == runs_before
    assert client.get_model_version(MODEL, "2").tags == tags_before
    assert alias_version(client, MODEL, CHAMPION) == "1"


def test_gate_on_a_given_window_with_thresholds_from_a_file(store, client, capsys, tmp_path):
    _aliases(client, "1")
    make_regression_csv(tmp_path / "window.csv", n=300, seed=7)
    (tmp_path / "gate.yaml").write_text("gate:\n  max_latency_p95_ms: 0.001\n")
    code, verdict, _ = _cli(capsys, "evaluate", "--model", MODEL, "--candidate", "2", "--data",
                            str(tmp_path / "window.csv"), "--config", str(tmp_path / "gate.yaml"), "--no-log")
    assert code == EXIT_REJECTED and verdict["data"] == {"source": str(tmp_path / "window.csv"), "rows": 300}
    assert verdict["checks"]["latency"] == "fail" and verdict["checks"]["nll_vs_champion"] == "pass"
    assert verdict["evaluation_run_id"] is None  # --no-log
    (tmp_path / "bad.yaml").write_text("gate:\n  coverage_90: [0.95, 0.9]\n")
    code, _, err = _cli(capsys, "evaluate", "--model", MODEL, "--config", str(tmp_path / "bad.yaml"))
    assert code == EXIT_BAD_INPUT and "coverage_90" in err


def test_score_writes_predictions_with_uncertainty_and_latency(store, client, capsys, tmp_path):
    _aliases(client, "1")
    make_regression_csv(tmp_path / "in.csv", n=2500, seed=3)
    frame = pd.read_csv(tmp_path / "in.csv").assign(id=lambda f: range(len(f)))
    frame.to_csv(tmp_path / "in.csv", index=False)
    code, result, _ = _cli(capsys, "score", "--model", f"{MODEL}@champion", "--input", str(tmp_path / "in.csv"),
                           "--output", str(tmp_path / "out.parquet"), "--batch-size", "1000")
    assert code == 0 and result["version"] == "1" and result["rows"] == 2500 and result["batches"] == 3
    assert result["batch_rows"] == [1000, 1000, 500] and result["batch_latency_ms"]["p95"] > 0
    out = pd.read_parquet(tmp_path / "out.parquet")
    assert list(out.columns) == ["y", "id", "mean", "sd", "q05", "q95"]
    assert (out["q05"] < out["mean"]).all() and (out["mean"] < out["q95"]).all() and (out["sd"] > 0).all()
    inside = ((out["y"] > out["q05"]) & (out["y"] < out["q95"])).mean()
    assert 0.8 < inside < 0.97  # a calibrated model: ~90% of labels inside the 5-95% interval
    assert json.loads((tmp_path / "out.parquet.latency.json").read_text())["rows"] == 2500

    # --device: the CPU by name is the default; a device this machine lacks, or no device at all, is refused before
    # anything is written.
    code, result, _ = _cli(capsys, "score", "--model", f"{MODEL}@champion", "--input", str(tmp_path / "in.csv"),
                           "--output", str(tmp_path / "cpu.parquet"), "--batch-size", "1000", "--device", "cpu")
    assert code == 0
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "cpu.parquet"), out)
    import torch

    absent = [("tpu", "expected 'cpu', 'cuda' or 'cuda:<index>'")]
    absent.append((f"cuda:{torch.cuda.device_count() if torch.cuda.is_available() else 0}", "CUDA device(s)"))
    for device, message in absent:
        code, _, err = _cli(capsys, "score", "--model", MODEL, "--input", str(tmp_path / "in.csv"),
                            "--output", str(tmp_path / "gpu.csv"), "--device", device)
        assert code == EXIT_BAD_INPUT and f"--device: device {device!r}" in err and message in err, err
        assert not (tmp_path / "gpu.csv").exists()

    # A version by number, and input that does not match the training schema.
    code, result, _ = _cli(capsys, "score", "--model", f"{MODEL}/2", "--input", str(tmp_path / "in.csv"),
                           "--output", str(tmp_path / "out2.csv"))
    assert code == 0 and result["version"] == "2"
    frame.drop(columns=["x1"]).to_csv(tmp_path / "missing.csv", index=False)
    frame.assign(x1=["a"] * len(frame)).to_csv(tmp_path / "text.csv", index=False)
    for name, message in (("missing.csv", "['x1'] not found"), ("text.csv", "column 'x1' is not numeric")):
        code, _, err = _cli(capsys, "score", "--model", MODEL, "--input", str(tmp_path / name),
                            "--output", str(tmp_path / f"{name}.out.csv"))
        assert code == EXIT_BAD_INPUT and message in err and name in err
        assert not (tmp_path / f"{name}.out.csv").exists()
