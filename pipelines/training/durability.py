"""A training run that survives its process: durable checkpoints, a heartbeat, reaping dead runs, resuming them.

- Checkpoints live in ``train.checkpoint_dir`` (default ``$VIOPS_WORK_DIR/checkpoints``), one folder per MLflow run:
  ``last.ckpt`` every ``train.checkpoint_every_seconds`` and ``on_exception.ckpt`` when training raises, beside the
  telemetry spool (steps the writer could not deliver). They are removed when the run finishes.
- While it trains, a run's ``viops.heartbeat`` tag is renewed every :data:`HEARTBEAT_SECONDS`, and
  ``viops.trainer`` says which process (host and pid) trains it. A RUNNING run belongs to a process that died
  (kill -9, an OOM kill, a lost node) when its heartbeat is older than ``stale_after``, or at once when that process
  was on this host and is gone: :func:`reap` marks it FAILED with the reason. ``viops train`` reaps its experiment
  before it starts; ``viops runs reap`` does it on demand.
- :func:`find_resumable` picks the newest unfinished run of a config that left a checkpoint; ``viops train
  --resume`` continues it in the same MLflow run.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["HEARTBEAT_TAG", "HEARTBEAT_SECONDS", "STALE_AFTER_SECONDS", "Heartbeat", "RunStillAlive", "Resumable",
           "checkpoint_root", "run_checkpoint_dir", "newest_checkpoint", "reap", "find_resumable"]

HEARTBEAT_TAG = "viops.heartbeat"
TRAINER_TAG = "viops.trainer"
HEARTBEAT_SECONDS = float(os.environ.get("VIOPS_HEARTBEAT_SECONDS", "30"))
#: A RUNNING run whose heartbeat is older than this is taken for dead (several missed heartbeats).
STALE_AFTER_SECONDS = float(os.environ.get("VIOPS_STALE_AFTER_SECONDS", "300"))
CHECKPOINTS = ("last.ckpt", "on_exception.ckpt")


class RunStillAlive(RuntimeError):
    """The run asked to be resumed is still training in another process (its heartbeat is fresh)."""


def checkpoint_root(configured: str | None) -> Path:
    """``train.checkpoint_dir``, else ``checkpoints`` in the work dir (``$VIOPS_WORK_DIR``)."""
    from pipelines.workspace import work_dir

    return Path(configured).expanduser() if configured else work_dir() / "checkpoints"


def run_checkpoint_dir(configured: str | None, run_id: str) -> Path:
    path = checkpoint_root(configured) / run_id
    path.mkdir(parents=True, exist_ok=True)
    return path


def newest_checkpoint(directory: Path) -> Path | None:
    """The most recent of ``last.ckpt`` and ``on_exception.ckpt`` in ``directory``, or None."""
    found = [directory / name for name in CHECKPOINTS if (directory / name).is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


class Heartbeat:
    """Renews the run's ``viops.heartbeat`` tag from a background thread until :meth:`stop`. A failed renewal (the
    server briefly away) is retried at the next beat; it never stops training."""

    def __init__(self, client, run_id: str, every: float = HEARTBEAT_SECONDS):
        self.client, self.run_id, self.every = client, run_id, every
        self._stop = threading.Event()
        client.set_tag(run_id, TRAINER_TAG, f"{socket.gethostname()}:{os.getpid()}")
        self._beat()
        self._thread = threading.Thread(target=self._run, daemon=True, name="viops-heartbeat")
        self._thread.start()

    def _beat(self) -> None:
        try:
            self.client.set_tag(self.run_id, HEARTBEAT_TAG, f"{time.time():.0f}")
        except Exception:  # noqa: BLE001 - the next beat tries again; a dead run is found by its stale heartbeat
            pass

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._beat()

    def stop(self) -> None:
        self._stop.set()


def _last_sign_of_life(run) -> float:
    beat = run.data.tags.get(HEARTBEAT_TAG)
    return float(beat) if beat else run.info.start_time / 1000.0


def _trainer_gone(run) -> bool:
    """True when the run's trainer process was on this host and no longer exists."""
    host, _, pid = run.data.tags.get(TRAINER_TAG, "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, as another user's process
        return False
    return False


def _dead(run, stale_after: float) -> tuple[bool, str]:
    """Whether ``run``'s trainer is dead, and how that is known."""
    last = _last_sign_of_life(run)
    age = time.time() - last
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(last))
    if _trainer_gone(run):
        return True, f"its process {run.data.tags[TRAINER_TAG]} no longer exists (last heartbeat {when})"
    return age >= stale_after, f"no heartbeat since {when} ({age:.0f} s)"


def reap(client, experiment_ids: list[str], *, stale_after: float = STALE_AFTER_SECONDS, by: str = "viops") -> list:
    """Mark FAILED every RUNNING viops training run of ``experiment_ids`` with no heartbeat for ``stale_after``
    seconds, with the reason in ``viops.failure_reason``. Returns ``[(run_id, reason), ...]``."""
    if not experiment_ids:
        return []
    reaped = []
    for run in client.search_runs(experiment_ids, "attributes.status = 'RUNNING' and tags.`viops.config_hash` != ''",
                                  max_results=1000):
        dead, how = _dead(run, stale_after)
        if not dead:
            continue
        reason = (f"the training process stopped without ending the run: {how}; marked FAILED by {by}. "
                  f"Resume it: viops train --config <config> --resume")
        client.set_tag(run.info.run_id, "viops.failure_reason", reason)
        client.set_terminated(run.info.run_id, status="FAILED")
        reaped.append((run.info.run_id, reason))
    return reaped


@dataclass(frozen=True)
class Resumable:
    """An unfinished run to continue: its id, the checkpoint to continue from, and the step it holds."""

    run_id: str
    checkpoint: Path
    step: int


def find_resumable(client, experiment_id: str, config_hash: str, checkpoint_dir: str | None,
                   run_name: str | None = None) -> Resumable | None:
    """The newest run of ``config_hash`` (and ``run_name``, when given) that did not finish and left a checkpoint.

    Raises:
        RunStillAlive: that run is RUNNING with a fresh heartbeat (another process is training it).
    """
    import torch

    query = f"tags.`viops.config_hash` = '{config_hash}' and attributes.status != 'FINISHED'"
    if run_name:
        query += f" and attributes.run_name = '{run_name}'"
    for run in client.search_runs([experiment_id], query, order_by=["attributes.start_time DESC"], max_results=50):
        checkpoint = newest_checkpoint(checkpoint_root(checkpoint_dir) / run.info.run_id)
        if checkpoint is None:
            continue
        if run.info.status == "RUNNING" and not _dead(run, STALE_AFTER_SECONDS)[0]:
            age = time.time() - _last_sign_of_life(run)
            raise RunStillAlive(f"run {run.info.run_id} is still training (heartbeat {age:.0f} s ago, by "
                                f"{run.data.tags.get(TRAINER_TAG, '?')}); wait for it, or resume once its heartbeat "
                                f"is older than {STALE_AFTER_SECONDS:.0f} s")
        step = int(torch.load(checkpoint, map_location="cpu", weights_only=False).get("global_step", 0))
        return Resumable(run.info.run_id, checkpoint, step)
    return None
