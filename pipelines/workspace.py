"""Where automated runs keep their files: scratch space for prepared data, and the local audit file.

``$VIOPS_WORK_DIR`` and ``$VIOPS_AUDIT_LOG`` place them (docs/operations.md); Airflow tasks key their folders by the
run id (:func:`safe_key`), so a retried task finds what it wrote before.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

__all__ = ["work_dir", "audit_log", "safe_key"]


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
