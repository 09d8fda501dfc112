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


def test_step_metrics_are_one_row_per_window_of_steps_sent_once_each():
    """StepTelemetry reduces each window of `every_n_steps` steps to one row at its last step (means; nan_count
    summed; lr at the last step), sends only complete windows until training ends, and keeps every step's ELBO."""
    from types import SimpleNamespace

    import torch

    from pipelines.training.callbacks import StepTelemetry

    sent = []
    telemetry = StepTelemetry(lambda names, rows: sent.append((names, rows)), flush_every_n_steps=7, every_n_steps=3)
    trainer, module = SimpleNamespace(global_step=0), SimpleNamespace(step_stats={})
    optimizer = SimpleNamespace(param_groups=[{"lr": 0.0}])
    for step in range(11):  # steps 0..10: windows {0,1,2} {3,4,5} {6,7,8} and the unfinished {9,10}
        trainer.global_step, optimizer.param_groups[0]["lr"] = step, 1.0 / (step + 1)
        module.step_stats = {"elbo": torch.tensor(float(step)),
                             "grad_norm/loc": torch.tensor(float("nan") if step == 4 else 2.0)}
        telemetry.on_before_optimizer_step(trainer, module, optimizer)
    telemetry.on_train_end(trainer, module)
    names = sent[0][0]
    assert names == ["elbo", "grad_norm/loc", "grad_norm/total", "nan_count", "lr"]
    rows = [row for _, batch in sent for row in batch]
    assert [step for step, _, _ in rows] == [2, 5, 8, 10]  # each window once, at its last step
    by_step = {step: dict(zip(names, values)) for step, _, values in rows}
    assert by_step[2]["elbo"] == pytest.approx(1.0) and by_step[10]["elbo"] == pytest.approx(9.5)
    assert by_step[2]["grad_norm/total"] == pytest.approx(2.0) and by_step[2]["lr"] == pytest.approx(1 / 3)
    assert by_step[5]["nan_count"] == 1 and by_step[8]["nan_count"] == 0  # step 4: one NaN gradient norm
    assert telemetry.elbo_history == [(step, float(step)) for step in range(11)]
