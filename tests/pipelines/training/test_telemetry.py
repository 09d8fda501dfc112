"""The telemetry writer process: every step's metrics arrive in the run, and where it writes stays off its command
line (which ``ps`` shows to every user of the machine)."""

from __future__ import annotations

import time

import pytest
from mlflow import MlflowClient

from pipelines.training.telemetry import MlflowMetricSink, TelemetryError


def test_the_writer_process_delivers_every_step_and_keeps_the_uri_off_its_command_line(tracking_uri):
    client = MlflowClient(tracking_uri)
    run_id = client.create_run(client.create_experiment("telemetry")).info.run_id
    sink = MlflowMetricSink(tracking_uri, run_id)
    assert tracking_uri not in " ".join(sink._proc.args) and run_id not in " ".join(sink._proc.args)
    now = int(time.time() * 1000)
    sink(["elbo", "grad_norm"], [[step, now, [-100.0 + step, 1.0 / (step + 1)]] for step in range(1500)])
    sink(["elbo", "grad_norm"], [[1500, now, [0.5, 0.25]]])
    sink.close()
    history = client.get_metric_history(run_id, "elbo")
    assert len(history) == 1501 and {m.step for m in history} == set(range(1501))
    assert client.get_metric_history(run_id, "grad_norm")[-1].value == pytest.approx(0.25)


def test_a_writer_that_cannot_write_fails_the_close_with_its_error(tmp_path):
    sink = MlflowMetricSink(f"sqlite:///{tmp_path / 'missing' / 'nowhere.db'}", "no-such-run")
    sink(["elbo"], [[0, 0, [1.0]]])
    with pytest.raises(TelemetryError, match="telemetry writer failed"):
        sink.close(timeout=120)
