"""The tracking server is down, or dies mid-run: every command fails within ~30 s with one line and exit 4, never
hangs, never mistakes the outage for a missing model, and never prints the password in the URI."""

from __future__ import annotations

import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from mlflow import MlflowClient

from tests.conftest import free_port
from tests.faults.conftest import finish, start, viops
from tests.servers import kill_server, start_mlflow_server

SECRET = "s3cret-pw"


def test_every_command_fails_fast_and_says_the_server_is_unreachable(example):
    root, _ = example
    dead = f"http://alice:{SECRET}@127.0.0.1:{free_port()}"
    window = root / "window.csv"
    window.write_text((root / "data.csv").read_text())
    commands = {
        "train": ["train", "--config", str(root / "blr_csv.yaml")],
        "register": ["register", "--run-id", "0" * 32, "--model", "blr-example"],
        "evaluate": ["evaluate", "--model", "blr-example"],
        "promote": ["promote", "--model", "blr-example", "--version", "1"],
        "rollback": ["rollback", "--model", "blr-example", "--reason", "outage drill"],
        "score": ["score", "--model", "blr-example", "--input", str(window), "--output", str(root / "o.csv")],
        "monitor": ["monitor", "--model", "blr-example", "--window", str(window), "--state-dir", str(root / "st")],
        "compare": ["compare", "--experiment", "blr-example"],
    }
    with ThreadPoolExecutor(max_workers=4) as pool:
        ran = dict(zip(commands, pool.map(lambda args: viops(*args, env={"MLFLOW_TRACKING_URI": dead}, cwd=root,
                                                              timeout=120), commands.values())))
    for name, r in ran.items():
        assert r.code == 4, f"{name}: exit {r.code}: {r.stderr[-2000:]}"
        assert r.seconds < 30 * 1.5, f"{name} took {r.seconds:.0f} s"  # 4 in parallel on 2 cores: some slack
        assert r.last_line.startswith(f"viops {name}: tracking server unreachable at http://alice:***@127.0.0.1"), (
            r.last_line)
        assert "Traceback" not in r.stderr and SECRET not in r.stderr + r.stdout


@pytest.fixture
def server(tmp_path):
    url, proc = start_mlflow_server(tmp_path, own_session=True)
    yield url, proc
    kill_server(proc)
    if "restarted" in proc.__dict__:
        kill_server(proc.__dict__["restarted"])


def test_not_found_is_said_only_when_the_server_answered_it(server):
    url, _ = server
    ran = viops("promote", "--model", "no-such-model", "--version", "1", env={"MLFLOW_TRACKING_URI": url})
    assert ran.code == 2 and "no registered model named 'no-such-model'" in ran.last_line, ran.stderr[-2000:]


def test_a_server_killed_during_training_ends_the_command_in_bounded_time(server, tmp_path):
    from tests.conftest import EXAMPLE_CONFIG, make_regression_csv

    url, proc = server
    (tmp_path / "blr_csv.yaml").write_text(EXAMPLE_CONFIG.read_text())
    make_regression_csv(tmp_path / "data.csv")
    # 13,200 steps, a row of step metrics every 20 (660 rows: the writer-process sink), a checkpoint every second.
    args = ["train", "--config", str(tmp_path / "blr_csv.yaml"), "--set", "train.max_epochs=1200",
            "--set", "train.early_stopping.enabled=false", "--set", "train.log_every_n_steps=20",
            "--set", "train.checkpoint_every_seconds=1"]
    env = {"MLFLOW_TRACKING_URI": url, "VIOPS_WORK_DIR": str(tmp_path / "work"), "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    started = time.monotonic()
    trainer = start(args, env=env, cwd=tmp_path)
    deadline = time.monotonic() + 120
    while not (checkpoints := list(tmp_path.glob("work/checkpoints/*/last.ckpt"))) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert checkpoints, "no checkpoint within 120 s"
    os.kill(trainer.pid, signal.SIGSTOP)
    assert trainer.poll() is None, "training ended before the server was killed"
    folder = checkpoints[0].parent
    kill_server(proc)
    killed = time.monotonic()
    # The writer, a process of its own, retries each batch for ~7.5 s before it gives up and spools. The trainer must
    # still be training then, however fast this machine runs its steps: it runs in short slices, frozen in between,
    # until the writer has given up (its spool exists); then it runs on and must stop at its next batch.
    while not (folder / "telemetry.spool.jsonl").exists() and time.monotonic() < killed + 120:
        os.kill(trainer.pid, signal.SIGCONT)
        time.sleep(0.1)
        os.kill(trainer.pid, signal.SIGSTOP)
        time.sleep(0.4)
    os.kill(trainer.pid, signal.SIGCONT)
    ran = finish(trainer, started, timeout=300)
    after_kill = time.monotonic() - killed
    print(f"trainer gave up {after_kill:.1f} s after the server was killed")
    assert ran.code == 4, f"exit {ran.code}: {ran.stderr[-3000:]}"
    assert after_kill < 120, f"the trainer took {after_kill:.0f} s to give up after the server died"
    assert ran.last_line.startswith("viops train: tracking server unreachable at http://127.0.0.1"), ran.last_line
    assert "Traceback" not in ran.stderr
    # What could not be delivered is kept: the checkpoint taken when training stopped, and the spooled telemetry.
    assert [folder] == list((tmp_path / "work" / "checkpoints").iterdir())
    assert (folder / "on_exception.ckpt").is_file() and (folder / "telemetry.spool.jsonl").is_file()
    stopped_at = torch.load(folder / "on_exception.ckpt", map_location="cpu", weights_only=False)["global_step"]
    assert 0 < stopped_at < 13_200, f"training did not stop when the metrics could not be delivered ({stopped_at})"
    spooled = [json.loads(line) for line in (folder / "telemetry.spool.jsonl").read_text().splitlines()]
    spooled_steps = {row[0] for batch in spooled if "elbo" in batch["names"] for row in batch["rows"]}

    # The server comes back (same database, new port): reap the orphaned run, resume it, and the spool is replayed.
    url, proc = start_mlflow_server(tmp_path, own_session=True)
    server[1].__dict__["restarted"] = proc  # stopped by the fixture's teardown below
    env["MLFLOW_TRACKING_URI"] = url
    reaped = viops("runs", "reap", "--stale-after", "1", env=env, cwd=tmp_path)
    assert [r["run_id"] for r in reaped.result["reaped"]] == [folder.name], reaped.stderr[-2000:]
    resumed = viops(*args, "--resume", env=env, cwd=tmp_path, timeout=600)
    assert resumed.code == 0 and resumed.result["run_id"] == folder.name, resumed.stderr[-3000:]
    client = MlflowClient(url, url)
    assert client.get_run(folder.name).info.status == "FINISHED"
    logged = {m.step for m in client.get_metric_history(folder.name, "elbo")}
    assert spooled_steps and spooled_steps <= logged
