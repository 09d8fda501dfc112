"""A store of production windows: Parquet, one partition per window time.

Layout (Hive-style, so ``pandas.read_parquet(root)`` or any Parquet engine reads the whole store with a ``window``
column)::

    root/window=2026-01-01T00:00:00Z/data.parquet   features, label (when it has arrived), predictions (once scored)
    root/window=2026-01-01T00:00:00Z/_meta.json     where the window came from (simulator scenario, source file ...)

Files whose names start with ``_`` or ``.`` (the metadata, a partial write) are skipped by Parquet readers.
A window is written whole: to a temporary file first, then renamed, so a reader never sees half a window.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

__all__ = ["WindowStore", "window_key", "parse_window_key"]

_PREFIX = "window="
_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def window_key(when: datetime) -> str:
    """``2026-01-01T00:00:00Z`` for a window start (naive times are taken as UTC)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc).strftime(_FORMAT)


def parse_window_key(key: str) -> datetime:
    return datetime.strptime(key.removeprefix(_PREFIX), _FORMAT).replace(tzinfo=timezone.utc)


class WindowStore:
    """Windows under ``root``, addressed by their start time."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def directory(self, when: datetime) -> Path:
        return self.root / f"{_PREFIX}{window_key(when)}"

    def path(self, when: datetime) -> Path:
        return self.directory(when) / "data.parquet"

    def write(self, when: datetime, frame: pd.DataFrame, meta: dict | None = None) -> Path:
        """Write (or replace) one window atomically; returns its data file."""
        directory = self.directory(when)
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / "data.parquet"
        partial = directory / ".data.parquet.partial"
        frame.to_parquet(partial, index=False)
        os.replace(partial, target)
        if meta is not None:
            (directory / "_meta.json").write_text(json.dumps({"window": window_key(when), **meta}, indent=2,
                                                            default=str))
        return target

    def windows(self) -> list[datetime]:
        """Window start times present, oldest first."""
        if not self.root.exists():
            return []
        return sorted(parse_window_key(p.name) for p in self.root.iterdir()
                      if p.name.startswith(_PREFIX) and (p / "data.parquet").exists())

    def read(self, when: datetime) -> pd.DataFrame:
        return pd.read_parquet(self.path(when))

    def meta(self, when: datetime) -> dict:
        path = self.directory(when) / "_meta.json"
        return json.loads(path.read_text()) if path.exists() else {"window": window_key(when)}
