"""The one retrain path (pipelines/lifecycle/retrain.py) and the child-process runner its training step uses,
against a real SQLite tracking store: training is a real ``viops train`` child process, the other steps the library
calls behind their commands."""

from __future__ import annotations

import json
import os
import time

import pytest
from mlflow import MlflowClient

from pipelines.child_process import CLIRefused, run_viops
from pipelines.config.loading import load_config, parse_overrides
from pipelines.errors import NotRetryable
from pipelines.lifecycle.retrain import (
    RetrainRequest,
    evaluate_candidate,
    promote_candidate,
    register_candidate,
    retrain,
)
from pipelines.lifecycle.train import train
from pipelines.tracking import HTTP_BUDGET, infrastructure_error
from tests.conftest import free_port, make_regression_csv

CONVERGED = ("train.max_epochs=60", "train.batch_size=32")


@pytest.fixture
def champion(example_dir, tracking_uri):
    """Version 1 of blr-example, champion, trained on 600 rows; and a window file of 200 new labelled rows plus 5 rows
    whose label has not arrived yet."""
    make_regression_csv(example_dir / "data.csv", n=600)
    first = train(load_config(example_dir / "blr_csv.yaml", parse_overrides(list(CONVERGED))), tracking_uri=tracking_uri)
    assert "champion" in first.aliases, first.registration
    window = make_regression_csv(example_dir / "window.csv", n=205, seed=7)
    text = window.read_text().splitlines()
    window.write_text("\n".join([*text[:-5], *(",".join([*line.split(",")[:-1], ""]) for line in text[-5:])]) + "\n")
    return example_dir, window


def _request(root, uri, window, **changes) -> RetrainRequest:
    fields = dict(config=str(root / "blr_csv.yaml"), reason="ViopsDataDrift on window w1", workdir=str(root / "work"),
                  tracking_uri=uri, overrides=CONVERGED, window=str(window), run_name="retrain-test",
                  actor="test:on-call", audit_log=str(root / "audit.jsonl"), trigger={"incident_id": "inc-1"})
    return RetrainRequest(**{**fields, **changes})


def test_retrain_trains_on_the_window_gates_and_promotes_with_the_request_in_the_audit(champion, tracking_uri):
    root, window = champion
    outcome = retrain(_request(root, tracking_uri, window))
    assert outcome["version"] == "2" and outcome["rows"] == 600 + 200  # the 5 unlabelled rows are left out
    assert outcome["verdict"]["passed"] and outcome["promoted"], outcome["verdict"]
    client = MlflowClient(tracking_uri, tracking_uri)
    assert str(client.get_model_version_by_alias("blr-example", "champion").version) == "2"
    run = client.get_run(outcome["run_id"])
    assert run.data.tags["viops.trigger_reason"] == "ViopsDataDrift on window w1"
    assert run.data.tags["mlflow.runName"] == "retrain-test" and run.data.params["train.batch_size"] == "32"
    version = client.get_model_version("blr-example", "2")
    assert version.tags["viops.data_fingerprint"] == run.data.tags["viops.data_fingerprint"]
    assert version.tags["viops.config_hash"] == run.data.tags["viops.config_hash"]
    assert version.tags["viops.gate.passed"] == "true" and version.tags["viops.promote.by"] == "test:on-call"
    record = json.loads((root / "audit.jsonl").read_text().splitlines()[-1])
    assert (record["action"], record["actor"], record["to_version"]) == ("promote", "test:on-call", "2")
    assert record["trigger"] == {"incident_id": "inc-1", "evaluation_run_id": outcome["verdict"]["evaluation_run_id"]}

    # Airflow clears register -> evaluate -> promote of this finished run: the version is champion already, so it is
    # not evaluated against itself and promoting it again changes nothing.
    registered = {"model_name": "blr-example", "model_version": "2", "aliases": ["champion", "challenger"]}
    verdict = evaluate_candidate(_request(root, tracking_uri, window), registered)
    assert verdict["already_champion"] and verdict["passed"] and verdict["evaluation_run_id"] is None
    again = promote_candidate(_request(root, tracking_uri, window), verdict)
    assert not again["changed"] and "already champion" in again["message"]


def test_a_rejected_retrain_stays_challenger_and_leaves_the_champion(champion, tracking_uri):
    root, window = champion
    strict = (*CONVERGED, "gate.max_nll=-100")  # no model reaches it: the gate must reject
    outcome = retrain(_request(root, tracking_uri, window, overrides=strict))
    assert not outcome["verdict"]["passed"] and not outcome["promoted"] and outcome["promotion"] is None
    assert any("above max_nll -100" in reason for reason in outcome["verdict"]["reasons"])
    client = MlflowClient(tracking_uri, tracking_uri)
    assert str(client.get_model_version_by_alias("blr-example", "champion").version) == "1"
    assert set(client.get_model_version("blr-example", outcome["version"]).aliases) == {"challenger"}
    assert not (root / "audit.jsonl").exists()


def test_the_runner_returns_the_json_result_or_raises_with_the_exit_code_and_error(example_dir):
    prepared = run_viops(["prepare", "--config", str(example_dir / "blr_csv.yaml"), "--out", str(example_dir / "p")])
    assert prepared["exit_code"] == 0 and prepared["rows"] == {"train": 2800, "validation": 600, "test": 600}
    assert (example_dir / "p" / "manifest.json").exists()
    with pytest.raises(CLIRefused) as failed:  # bad input: a retry would fail the same way
        run_viops(["prepare", "--config", str(example_dir / "missing.yaml"), "--out", str(example_dir / "q")])
    assert failed.value.returncode == 2 and isinstance(failed.value, NotRetryable)
    assert str(failed.value) == (f"viops prepare exited with code 2: viops prepare: error: config file not found: "
                                 f"{example_dir / 'missing.yaml'}")


def test_a_step_in_process_fails_within_the_request_budget_when_the_server_is_down(tmp_path):
    # MLflow's own HTTP defaults retry a refused connection for ~4.5 minutes: the step applies viops' budget first.
    unset = [name for name in HTTP_BUDGET if name not in os.environ]
    saved = {name: os.environ.pop(name) for name in HTTP_BUDGET if name in os.environ}
    uri = f"http://127.0.0.1:{free_port()}"
    request = RetrainRequest(config="unused.yaml", reason="pytest", workdir=str(tmp_path), tracking_uri=uri)
    started = time.monotonic()
    try:
        with pytest.raises(Exception) as failed:
            register_candidate(request, {"run_id": "0" * 32, "model_name": "blr-example"})
    finally:
        for name in unset:
            os.environ.pop(name, None)
        os.environ.update(saved)
    assert time.monotonic() - started < 60
    assert "tracking server unreachable" in infrastructure_error(failed.value, uri)  # retried, not a bad request
