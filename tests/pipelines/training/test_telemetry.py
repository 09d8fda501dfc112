"""The telemetry writer process: every step's metrics arrive in the run, and where it writes stays off its command
line (which ``ps`` shows to every user of the machine)."""

from __future__ import annotations

import json
import time

import pytest
from mlflow import MlflowClient

from pipelines.training.telemetry import SPOOL, MlflowMetricSink, TelemetryError, ThreadedMetricSink


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


def test_a_writer_that_cannot_write_spools_every_batch_and_fails_the_trainer_and_the_close(tmp_path):
    """Once delivery fails, the trainer's next batch raises, and nothing is lost: the failed batch and every later
    one (those queued after the failure, those the trainer flushes as it stops) are in the spool."""
    spool = tmp_path / SPOOL
    sink = MlflowMetricSink(f"sqlite:///{tmp_path / 'missing' / 'nowhere.db'}", "no-such-run", spool=spool)
    sink(["elbo"], [[0, 0, [1.0]]])
    deadline = time.monotonic() + 120
    while sink._failure is None and time.monotonic() < deadline:  # the writer spends its retries on batch 0
        time.sleep(0.2)
    with pytest.raises(TelemetryError, match="failed after 5 attempts"):
        sink(["elbo"], [[1, 0, [2.0]]])
    with pytest.raises(TelemetryError, match="telemetry writer failed .exit 1.: log_batch to run no-such-run"):
        sink.close(timeout=120)
    assert [json.loads(line)["rows"][0][0] for line in spool.read_text().splitlines()] == [0, 1]
    with pytest.raises(TelemetryError, match="exited early"):  # the writer is gone: the batch is spooled here
        sink(["elbo"], [[2, 0, [3.0]]])
    assert [json.loads(line)["rows"][0][0] for line in spool.read_text().splitlines()] == [0, 1, 2]


def _counting_requests(sink) -> list[int]:
    """Wrap ``sink.client.log_batch``: the returned list gets each request's number of metrics."""
    sizes, send = [], sink.client.log_batch

    def log_batch(run_id, metrics=(), **kwargs):
        sizes.append(len(metrics))
        return send(run_id, metrics=metrics, **kwargs)

    sink.client.log_batch = log_batch
    return sizes


def test_the_in_process_sink_sends_what_it_holds_once_per_interval_and_the_rest_at_close(tracking_uri):
    """A short run's validations and flushes reach MLflow in one request when the fit ends, not one request each
    (every request holds the trainer's GIL for milliseconds); past the interval, what is held goes out at once."""
    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("threaded-telemetry")
    run_id = client.create_run(experiment).info.run_id
    sink = ThreadedMetricSink(tracking_uri, run_id, interval=3600.0)
    sizes = _counting_requests(sink)
    sink(["elbo", "kl"], [[step, 0, [-10.0 + step, 1.0]] for step in range(40)])
    for step in range(10, 50, 10):
        sink(["val_elbo"], [[step, 0, [-0.5 / step]]])
    time.sleep(0.2)
    assert sizes == []  # held, within the interval
    sink.close()
    assert sizes == [84]
    assert {m.step for m in client.get_metric_history(run_id, "elbo")} == set(range(40))
    assert [m.step for m in client.get_metric_history(run_id, "val_elbo")] == [10, 20, 30, 40]

    eager_run = client.create_run(experiment).info.run_id
    eager = ThreadedMetricSink(tracking_uri, eager_run, interval=0.0)
    sizes = _counting_requests(eager)
    for step in range(3):
        eager(["elbo"], [[step, 0, [float(step)]]])
    deadline = time.monotonic() + 30
    while len(sizes) < 3 and time.monotonic() < deadline:  # sent without waiting for close
        time.sleep(0.05)
    assert sizes == [1, 1, 1]
    eager.close()
    assert len(client.get_metric_history(eager_run, "elbo")) == 3


def test_an_in_process_sink_that_cannot_write_spools_every_batch_it_held(tmp_path, monkeypatch):
    import pipelines.training.telemetry as telemetry

    monkeypatch.setattr(telemetry.time, "sleep", lambda seconds: None)  # the retries' back-off
    spool = tmp_path / SPOOL
    sink = ThreadedMetricSink(f"sqlite:///{tmp_path / 'missing' / 'nowhere.db'}", "no-such-run", spool=spool,
                              interval=3600.0)
    sink(["elbo"], [[0, 0, [1.0]]])
    sink(["val_elbo"], [[0, 0, [2.0]]])
    with pytest.raises(TelemetryError, match="failed after 5 attempts"):
        sink.close()
    assert [json.loads(line)["names"] for line in spool.read_text().splitlines()] == [["elbo"], ["val_elbo"]]


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


def test_a_failing_run_hands_over_the_steps_it_still_holds():
    """On an exception StepTelemetry sends every step it holds, also the unfinished window, and a sink that has
    failed already (it spooled the batch) does not replace the run's own error."""
    from types import SimpleNamespace

    import torch

    from pipelines.training.callbacks import StepTelemetry

    sent = []

    def sink(names, rows):
        sent.append([step for step, _, _ in rows])
        if len(sent) > 1:
            raise TelemetryError("server gone")

    telemetry = StepTelemetry(sink, flush_every_n_steps=4, every_n_steps=1)
    trainer, optimizer = SimpleNamespace(global_step=0), SimpleNamespace(param_groups=[{"lr": 0.1}])
    for step in range(6):
        trainer.global_step = step
        telemetry.on_before_optimizer_step(trainer, SimpleNamespace(step_stats={"elbo": torch.tensor(1.0)}), optimizer)
    telemetry.on_exception(trainer, None, RuntimeError("diverged"))
    assert sent == [[0, 1, 2, 3], [4, 5]]


def test_metrics_undeliverable_as_the_fit_ends_fail_the_run_and_keep_the_finished_fit(example_dir, tracking_uri,
                                                                                     tmp_path, monkeypatch):
    """The tracking store stops answering after the last step: the command fails, and ``--resume`` goes on from the
    finished fit (``on_exception.ckpt`` at the last step), not from the last time-based checkpoint. Until then the
    run is still RUNNING: the fit's logger does not end it."""
    import torch

    import pipelines.training.telemetry as telemetry
    from pipelines.config.loading import load_config
    from pipelines.lifecycle.train import train
    from pipelines.training.data import prepare
    from pipelines.training.loaders import planned_steps

    status_when_the_fit_ended = []

    def undeliverable(self):  # fault injection: every batch held until the end fails to go out
        status_when_the_fit_ended.append(MlflowClient(tracking_uri).get_run(self.run_id).info.status)
        raise TelemetryError("log_batch to run failed after 5 attempts: connection refused")

    monkeypatch.setattr(telemetry.ThreadedMetricSink, "close", undeliverable)
    monkeypatch.setenv("VIOPS_WORK_DIR", str(tmp_path))
    config = load_config(example_dir / "blr_csv.yaml", {"train.max_epochs": 20})
    with pytest.raises(TelemetryError, match="connection refused"):
        train(config, tracking_uri=tracking_uri)
    (folder,) = (tmp_path / "checkpoints").iterdir()
    kept = torch.load(folder / "on_exception.ckpt", map_location="cpu", weights_only=False)
    data = prepare(config.data)
    assert kept["global_step"] == planned_steps(data.train_rows, config.train) > 0
    assert MlflowClient(tracking_uri).get_run(folder.name).info.status == "FAILED"
    # Lightning's MLflow logger ends the run when the fit ends; the run is viops' to end, after the final metrics.
    assert status_when_the_fit_ended[0] == "RUNNING"
