"""Where automated runs keep their files: scratch space for prepared data, and the local audit file.

``$VIOPS_WORK_DIR`` and ``$VIOPS_AUDIT_LOG`` place them (docs/operations.md); Airflow tasks key their folders by the
run id (:func:`safe_key`), so a retried task finds what it wrote before.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["work_dir", "audit_log", "safe_key", "replacing"]


def work_dir() -> Path:
    """Scratch space for prepared data: ``$VIOPS_WORK_DIR``, else a ``viops`` folder in the system temp dir."""
    path = Path(os.environ.get("VIOPS_WORK_DIR") or Path(tempfile.gettempdir()) / "viops")
    path.mkdir(parents=True, exist_ok=True)
    return path


def audit_log() -> Path:
    """The local audit file for automated changes: ``$VIOPS_AUDIT_LOG``, else ``audit.jsonl`` in :func:`work_dir`."""
    return Path(os.environ.get("VIOPS_AUDIT_LOG") or work_dir() / "audit.jsonl")


def safe_key(text: str) -> str:
    """A filesystem-safe version of an Airflow run id (``manual__2026-01-01T00:00:00+00:00`` ...)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "run"


@contextmanager
def replacing(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target`` to write; on success it replaces ``target`` in one rename, on error
    it is removed. The name is unique per writer, so two processes writing the same target never share a file:
    the last rename wins and readers only ever see a whole file."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    os.close(fd)
    partial = Path(name)
    try:
        yield partial
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
