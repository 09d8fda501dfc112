"""Batched delivery of per-step training metrics to MLflow, from a separate writer process.

A tracking write costs far more than an SVI step of a small model (the SQLite store spends ~0.1 ms per metric value
in SQLAlchemy), so steps are sent in batches of up to 1,000 values per ``log_batch`` request by a child process
(``python -m pipelines.training.telemetry``, told where to write through its environment) that reads JSON lines on
stdin. The training process only serialises; the writes run on another core. :meth:`MlflowMetricSink.close` waits
for delivery and raises if any write failed.

When the tracking server stops answering, the writer says so on stderr and from then on appends every batch it
receives, until the trainer closes its stdin, to a spool file in the run's checkpoint folder (:data:`SPOOL`). The
trainer's next batch then raises, which stops training within the writer's retry budget (the run is then FAILED,
or left for the reaper when the server cannot be told); the batches it still holds, including those flushed when
training fails for another reason, go through the writer into the spool. ``viops train --resume`` replays the spool
into the same run before it continues (:func:`replay_spool`), so no step's metrics are lost.
"""

from __future__ import annotations

import gc
import json
import os
import queue
import subprocess
import sys
import threading
import time

__all__ = ["MlflowMetricSink", "ThreadedMetricSink", "NullSink", "make_sink", "replay_spool", "TelemetryError",
           "SPOOL", "THREAD_SINK_INTERVAL_S"]

MAX_METRICS_PER_REQUEST = 1000
#: The writer process reads the run id from here (and the tracking URI from ``MLFLOW_TRACKING_URI``).
RUN_ID_ENV = "VIOPS_TELEMETRY_RUN_ID"
#: Runs that will log at least this many rows of step metrics write them from a separate process.
PROCESS_SINK_MIN_ROWS = 250
#: Undelivered batches (JSON lines ``{"names": [...], "rows": [...]}``) in the run's checkpoint folder.
SPOOL = "telemetry.spool.jsonl"
SPOOL_ENV = "VIOPS_TELEMETRY_SPOOL"
#: The writer's stderr line that says delivery failed and later batches are being spooled.
FAILED_MARK = "viops-telemetry-failed: "


def _spool(path, lines: list[str]) -> None:
    if path is None or not lines:
        return
    with open(path, "a", encoding="utf-8") as handle:
        handle.writelines(line if line.endswith("\n") else line + "\n" for line in lines)


def replay_spool(client, run_id: str, directory) -> int:
    """Send the batches spooled in ``directory`` to ``run_id`` and remove the spool; returns how many batches."""
    from pathlib import Path

    path = Path(directory) / SPOOL
    if not path.is_file():
        return 0
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for line in lines:
        batch = json.loads(line)
        _send(client, run_id, _metrics(batch["names"], batch["rows"]))
    path.unlink()
    return len(lines)


class TelemetryError(RuntimeError):
    """Step metrics could not be delivered to MLflow."""


def _metrics(names: list[str], rows: list):
    from mlflow.entities import Metric

    return [
        Metric(key=name, value=float(value), timestamp=ts, step=step)
        for step, ts, values in rows
        for name, value in zip(names, values)
    ]


def _send(client, run_id: str, metrics: list) -> None:
    """``log_batch`` in chunks of 1,000 values, retrying transient failures with backoff."""
    for start in range(0, len(metrics), MAX_METRICS_PER_REQUEST):
        chunk = metrics[start : start + MAX_METRICS_PER_REQUEST]
        for attempt in range(5):
            try:
                client.log_batch(run_id, metrics=chunk)
                break
            except Exception as exc:  # network or lock errors: back off, then give up loudly
                if attempt == 4:
                    raise TelemetryError(f"log_batch to run {run_id} failed after 5 attempts: {exc}") from exc
                time.sleep(0.5 * 2**attempt)


class NullSink:
    """Discards step metrics (``train.log_step_metrics: false``); validation and final metrics are still logged."""

    def __call__(self, names: list[str], rows: list) -> None:
        pass

    def send_held(self) -> None:
        pass

    def close(self) -> None:
        pass


def make_sink(tracking_uri: str, run_id: str, planned_rows: int, enabled: bool = True, spool=None):
    """A writer process for runs that log many rows of step metrics (its start-up costs ~2 s of CPU), a background
    thread for the others; both spool what they cannot deliver to ``spool``."""
    if not enabled:
        return NullSink()
    if planned_rows >= PROCESS_SINK_MIN_ROWS:
        return MlflowMetricSink(tracking_uri, run_id, spool)
    return ThreadedMetricSink(tracking_uri, run_id, spool)


#: The in-process sink sends what it holds at most this often, and when the fit ends. A tracking write costs this
#: process milliseconds of CPU and holds its GIL meanwhile: one request per validation and per flush of step metrics
#: took a fifth of a small model's fit. Held metrics reach MLflow within this many seconds of being logged.
THREAD_SINK_INTERVAL_S = 5.0


class ThreadedMetricSink:
    """In-process sink for runs that log few rows: one background thread writes what was handed over, as one
    ``log_batch`` request per :data:`THREAD_SINK_INTERVAL_S` seconds (and the rest at :meth:`close`)."""

    def __init__(self, tracking_uri: str, run_id: str, spool=None, interval: float = THREAD_SINK_INTERVAL_S):
        from concurrent.futures import ThreadPoolExecutor

        from mlflow import MlflowClient

        self.client, self.run_id, self.spool = MlflowClient(tracking_uri=tracking_uri), run_id, spool
        self.interval = interval
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="viops-telemetry")
        self._pending: list = []
        self._held: list[tuple[list[str], list]] = []
        self._sent_at = time.monotonic()
        self._failed = False

    def _deliver(self, batches: list[tuple[list[str], list]]) -> None:
        if not self._failed:
            try:
                _send(self.client, self.run_id, [m for names, rows in batches for m in _metrics(names, rows)])
                return
            except TelemetryError:
                self._failed = True
                self._spool(batches)
                raise
        self._spool(batches)

    def _spool(self, batches: list[tuple[list[str], list]]) -> None:
        _spool(self.spool, [json.dumps({"names": names, "rows": rows}) for names, rows in batches])

    def send_held(self) -> None:
        """Start delivering what is held now, without waiting for it (:meth:`close` waits)."""
        if self._held:
            self._pending.append(self._executor.submit(self._deliver, self._held))
            self._held = []
        self._sent_at = time.monotonic()

    def __call__(self, names: list[str], rows: list) -> None:
        self._held.append((names, rows))
        if time.monotonic() - self._sent_at >= self.interval:
            self.send_held()

    def close(self) -> None:
        try:
            self.send_held()
            for future in self._pending:
                future.result()
        finally:
            self._pending.clear()
            self._executor.shutdown(wait=True)


class MlflowMetricSink:
    """Callable sink for :class:`pipelines.callbacks.StepTelemetry`, writing to one MLflow run from a child process.

    Args:
        tracking_uri: the MLflow tracking URI (passed explicitly to the writer process).
        run_id: the run the metrics belong to.
    """

    def __init__(self, tracking_uri: str, run_id: str, spool=None):
        self.run_id, self.spool = run_id, spool
        # Where to write goes through the environment, not the command line (which `ps` shows to every user).
        env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, RUN_ID_ENV: run_id,
               **({SPOOL_ENV: str(spool)} if spool is not None else {})}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "pipelines.training.telemetry"],
            stdin=subprocess.PIPE, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, text=True,
        )
        self._stderr: list[str] = []
        self._failure: str | None = None  # the writer's FAILED_MARK line, once it has given up delivering
        self._closed = False
        self._drain = threading.Thread(target=self._read_stderr, daemon=True)
        self._drain.start()

    def _read_stderr(self) -> None:
        for line in self._proc.stderr:
            self._stderr.append(line)
            if line.startswith(FAILED_MARK):
                self._failure = line[len(FAILED_MARK):].strip()

    def __call__(self, names: list[str], rows: list) -> None:
        """Queue a batch for the writer; raise :class:`TelemetryError` once the writer has stopped delivering (the
        batch is spooled all the same, by the writer or, when it is gone, here)."""
        line = json.dumps({"names": names, "rows": rows})
        try:
            if self._proc.poll() is not None:
                raise BrokenPipeError
            self._proc.stdin.write(line + "\n")
            self._proc.stdin.flush()
        except (BrokenPipeError, ValueError):  # the writer is gone (or its stdin closed): keep the batch here
            _spool(self.spool, [line])
            raise TelemetryError(f"telemetry writer exited early: {''.join(self._stderr)[-2000:]}") from None
        if self._failure is not None:
            raise TelemetryError(self._failure)

    def send_held(self) -> None:
        """Nothing is held here: every batch went to the writer when it was given."""

    def close(self, timeout: float = 600.0) -> None:
        """Wait until every batch is delivered; raise :class:`TelemetryError` if the writer failed. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            code = self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            raise TelemetryError(f"telemetry writer did not finish within {timeout:.0f} s") from None
        self._drain.join(timeout=5)
        if code != 0:
            said = self._failure or "".join(self._stderr)[-2000:].strip()
            raise TelemetryError(f"telemetry writer failed (exit {code}): {said}")


def _deliver(tracking_uri: str, run_id: str, spool: str | None = None) -> int:
    """Writer process: read JSON lines from stdin, send them with ``log_batch``; retry transient failures. When a
    batch cannot be delivered, the writer prints :data:`FAILED_MARK` and the error, appends that batch and every
    later one to ``spool`` until stdin closes, and exits 1."""
    lines: queue.Queue = queue.Queue()

    def reader() -> None:  # drain the pipe from the start, so the trainer never blocks on a write
        for line in sys.stdin:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=reader, daemon=True).start()
    try:
        os.nice(int(os.environ.get("VIOPS_TELEMETRY_NICE", "5")))  # yield the CPU to the trainer
    except OSError:
        pass
    from mlflow import MlflowClient  # imported after the reader starts: this takes seconds

    try:
        # Open the store now (a SQLite store's schema check costs ~0.5 s of CPU), while the trainer is still setting
        # up, not beside its first steps: on a small machine a busy second core slows the training loop.
        client = MlflowClient(tracking_uri=tracking_uri)
        client.get_run(run_id)
    except Exception:
        client = None  # the first batch tries again, and reports what fails
    # Writes allocate many short-lived ORM objects; scanning the large, long-lived heap of imported modules on every
    # collection made them ~30% slower. Freeze what exists now and collect young objects less often.
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    failed, spooled = None, 0
    while (line := lines.get()) is not None:
        if failed is None:
            batch = json.loads(line)
            try:
                client = client or MlflowClient(tracking_uri=tracking_uri)
                _send(client, run_id, _metrics(batch["names"], batch["rows"]))
                continue
            except Exception as exc:  # retries spent, or no client: spool from now on; the trainer stops next batch
                failed = f"{exc}; undelivered batches are spooled to {spool}" if spool else str(exc)
                print(f"{FAILED_MARK}{failed}", file=sys.stderr, flush=True)
        _spool(spool, [line])
        spooled += 1
    if failed is not None:
        print(f"{failed} ({spooled} batch(es))" if spool else failed, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # the writer process that MlflowMetricSink starts
    from pipelines.frame_stack import in_one_stack_chunk

    # Importing MLflow and writing from a chunk's edge mapped and unmapped ~10,000 chunks a run (frame_stack.py).
    code = in_one_stack_chunk(lambda: _deliver(os.environ["MLFLOW_TRACKING_URI"], os.environ[RUN_ID_ENV],
                                               os.environ.get(SPOOL_ENV)))
    gc.freeze()  # every batch is written: spare the trainer's close() the shutdown's rescans of the heap (~0.2 s)
    sys.exit(code)
