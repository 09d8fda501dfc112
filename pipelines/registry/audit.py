"""The audit trail of champion changes: one record per promotion or rollback, in MLflow and in a local JSON-lines file.

Each record is an MLflow run in the ``viops-audit`` experiment (tags ``viops.audit.*`` and ``record.json``) and one
line appended to a local file (``$VIOPS_AUDIT_LOG``, else ``viops-audit.jsonl`` in the working directory). Writing is
idempotent per ``event_id``: a retried promotion or rollback that finds its record already written adds nothing.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from mlflow import MlflowClient

__all__ = ["AUDIT_EXPERIMENT", "AuditRecord", "audit_log_path", "write_record", "read_log", "find_mlflow_record",
           "utc_now", "default_actor"]

AUDIT_EXPERIMENT = "viops-audit"
_TAG = "viops.audit."


def default_actor() -> str:
    """Who is asking: ``$VIOPS_ACTOR`` (set by automation, e.g. ``airflow:svi_retrain/<run id>``), else the OS user."""
    import getpass

    try:
        return os.environ.get("VIOPS_ACTOR") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def utc_now() -> str:
    """The time now, ISO 8601 in UTC, to the millisecond. The monitor compares a promotion's time with the times
    windows were monitored at (``time.time()``): cut to the second, a promotion could read as earlier than the window
    monitored just before it, and the rollback runbook's "within N windows of the promotion" would not apply."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class AuditRecord:
    """One change of a model's ``champion`` alias.

    Attributes:
        event_id: unique per change; also tagged on the model versions involved, so a retry can find it.
        action: ``promote``, ``rollback``, or ``reject`` (a challenger turned away in shadow; the champion did
            not move, and ``verdict`` holds the version and the live evidence).
        model: registered model name.
        from_version: the champion before the change (None for a first champion).
        to_version: the champion after the change.
        reason: why, in the words of whoever (or whatever) asked for it.
        actor: who asked: a user name, or ``airflow:<dag_id>/<run_id>``.
        time: when the alias moved (UTC, ISO 8601).
        verdict: the evidence the change rests on (the gate's verdict for a promotion), or None.
        trigger: where the request came from (an Airflow run, an incident id ...), free-form.
    """

    event_id: str
    action: str
    model: str
    from_version: str | None
    to_version: str
    reason: str
    actor: str
    time: str
    verdict: dict | None = None
    trigger: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


def audit_log_path(path: str | Path | None = None) -> Path:
    """The local audit file: ``path``, else ``$VIOPS_AUDIT_LOG``, else ``./viops-audit.jsonl``."""
    return Path(path or os.environ.get("VIOPS_AUDIT_LOG") or "viops-audit.jsonl")


def read_log(path: str | Path | None = None) -> list[dict]:
    """Every record of the local audit file, oldest first (an absent file has none)."""
    path = audit_log_path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _append_line(path: Path, record: AuditRecord) -> bool:
    """Append ``record`` unless a line with its event id is there already; True when a line was written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # concurrent writers (two Airflow tasks) append whole lines, in turn
        try:
            handle.seek(0)
            if any(json.loads(line).get("event_id") == record.event_id for line in handle if line.strip()):
                return False
            handle.seek(0, os.SEEK_END)
            handle.write(json.dumps(record.to_json(), sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
            return True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def find_mlflow_record(client: MlflowClient, event_id: str) -> str | None:
    """The run id of the audit run for ``event_id``, or None."""
    experiment = client.get_experiment_by_name(AUDIT_EXPERIMENT)
    if experiment is None:
        return None
    runs = client.search_runs([experiment.experiment_id], f"tags.`{_TAG}event_id` = '{event_id}'", max_results=1)
    return runs[0].info.run_id if runs else None


def write_record(client: MlflowClient, record: AuditRecord, path: str | Path | None = None) -> str:
    """Write ``record`` to MLflow and to the local file, each only if it is not there yet; returns the audit run id."""
    run_id = find_mlflow_record(client, record.event_id)
    if run_id is None:
        from pipelines.tracking import experiment_id as get_experiment_id

        experiment_id = get_experiment_id(client, AUDIT_EXPERIMENT)
        tags = {f"{_TAG}{key}": "" if value is None else str(value) for key, value in record.to_json().items()
                if key not in ("verdict", "trigger")}
        if record.verdict is not None:
            tags[f"{_TAG}verdict_passed"] = str(record.verdict.get("passed"))
        tags["mlflow.user"] = record.actor
        name = f"{record.action} {record.model}: v{record.from_version or '-'} -> v{record.to_version}"
        if record.action == "reject":  # the champion did not move: name the version turned away
            rejected = record.verdict["candidate_version"]
            name = f"reject {record.model}: v{rejected} (champion stays v{record.to_version})"
        run = client.create_run(experiment_id, run_name=name, tags=tags)
        client.log_dict(run.info.run_id, record.to_json(), "record.json")
        client.set_terminated(run.info.run_id, status="FINISHED")
        run_id = run.info.run_id
    _append_line(audit_log_path(path), record)
    return run_id
