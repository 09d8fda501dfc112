"""A store of production windows: Parquet, one partition per window time.

Layout (Hive-style, so ``pandas.read_parquet(root)`` or any Parquet engine reads the whole store with a ``window``
column)::

    root/window=2026-01-01T00:00:00Z/data.parquet   features, label (when it has arrived), predictions (once scored)
    root/window=2026-01-01T00:00:00Z/_meta.json     where the window came from (simulator scenario, source file ...)
    root/window=2026-01-01T00:00:00Z/_shadow/<model>-v<version>.parquet   a challenger's predictions (in shadow)

Files whose names start with ``_`` or ``.`` (the metadata, a partial write) are skipped by Parquet readers.
A window is written whole: to a temporary file first, then renamed, so a reader never sees half a window.

:class:`Window` is one window read for monitoring: its key, start time, file, rows and labelled rows are worked out
once, here, and everything downstream takes the ``Window``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from pipelines.tables import read_table
from pipelines.workspace import replacing

__all__ = ["Window", "WindowStore", "window_key", "parse_window_key", "STATE_DIR_NAME"]

#: The monitor's state (SLO history, incidents, metrics file) lives in this folder at the root of a window store;
#: Parquet readers skip dot-folders.
STATE_DIR_NAME = ".viops-monitor"

_PREFIX = "window="
_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def window_key(when: datetime) -> str:
    """``2026-01-01T00:00:00Z`` for a window start (naive times are taken as UTC)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc).strftime(_FORMAT)


def parse_window_key(key: str) -> datetime:
    """The start time of ``2026-01-01T00:00:00Z`` (or of its partition name ``window=2026-01-01T00:00:00Z``)."""
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
        with replacing(target) as partial:
            frame.to_parquet(partial, index=False)
        if meta is not None:
            self.write_meta(when, meta)
        return target

    def write_meta(self, when: datetime, meta: dict) -> None:
        """Replace the ``_meta.json`` of a window (where it came from, which version scored it)."""
        (self.directory(when) / "_meta.json").write_text(json.dumps({"window": window_key(when), **meta}, indent=2,
                                                                    default=str))

    def windows(self) -> list[datetime]:
        """Window start times present, oldest first."""
        if not self.root.exists():
            return []
        return sorted(parse_window_key(p.name) for p in self.root.iterdir()
                      if p.name.startswith(_PREFIX) and (p / "data.parquet").exists())

    def read(self, when: datetime) -> pd.DataFrame:
        return pd.read_parquet(self.path(when))

    def window_in(self, start: datetime, end: datetime) -> datetime | None:
        """The newest window that starts in ``[start, end)`` (a scheduled run's data interval), or None."""
        inside = [when for when in self.windows() if start <= when < end]
        return inside[-1] if inside else None

    def meta(self, when: datetime) -> dict:
        path = self.directory(when) / "_meta.json"
        return json.loads(path.read_text()) if path.exists() else {"window": window_key(when)}


@dataclass(frozen=True)
class Window:
    """One production window, read once.

    Attributes:
        key: its id: the explicit one, else its store partition's time (``2026-01-01T00:00:00Z``), else the file name.
        path: the data file (absolute).
        frame: its rows as read.
        start: the window's start time when the file sits in a store partition, else None.
    """

    key: str
    path: Path
    frame: pd.DataFrame
    start: datetime | None = None

    @classmethod
    def read(cls, path: str | Path, key: str | None = None, *, rows: bool = True) -> Window:
        """Read a window file (CSV/Parquet), inside a window store or not; ``rows=False`` leaves its rows on disk
        (``frame`` is empty) for a window read in chunks (:mod:`monitoring.large_windows`).

        Raises:
            DataError: the file is missing or unreadable.
        """
        path = Path(path).resolve()
        frame = read_table(path) if rows else pd.DataFrame()
        partition = next((part for part in reversed(path.parent.parts) if part.startswith(_PREFIX)), None)
        start = parse_window_key(partition) if partition is not None else None
        return cls(key or (window_key(start) if start is not None else path.stem), path, frame, start)

    @property
    def store(self) -> WindowStore | None:
        """The window store holding this file in its own partition, or None for a file outside one."""
        if self.start is None or not self.path.parent.name.startswith(_PREFIX):
            return None
        return WindowStore(self.path.parent.parent)

    @property
    def scored_by(self) -> str | None:
        """The ``model/version`` whose predictions the window's partition stores (None: not recorded)."""
        store = self.store
        return None if store is None else store.meta(self.start).get("scored_by")

    def drift_report_path(self) -> Path:
        """Where this window's Evidently drift report goes: ``drift_report.html`` in its store partition, else
        ``<file stem>.drift_report.html`` beside the file."""
        if self.start is not None:
            return self.path.parent / "drift_report.html"
        return self.path.with_name(f"{self.path.stem}.drift_report.html")

    def default_state_dir(self) -> Path:
        """``.viops-monitor`` at the root of the window store the file belongs to, else beside the file."""
        for parent in self.path.parents:
            if parent.name.startswith(_PREFIX):
                return parent.parent / STATE_DIR_NAME
        return self.path.parent / STATE_DIR_NAME

    def write_scored(self, predictions: pd.DataFrame, scored_by: str) -> bool:
        """Store ``predictions`` (indexed like the frame's rows; rows without one get NaN) in this window's partition,
        so the store holds scored windows. Returns False, writing nothing, for a file outside a store."""
        store = self.store
        if store is None:
            return False
        scored = self.frame.copy()
        for column in predictions.columns:
            scored[column] = predictions[column].astype("float64").reindex(scored.index)
        store.write(self.start, scored, meta={**store.meta(self.start), "scored_by": scored_by})
        return True

    def write_shadow(self, predictions: pd.DataFrame, name: str) -> str | None:
        """Store a challenger's ``predictions`` (indexed like the frame's rows) as ``_shadow/<name>.parquet`` in this
        window's partition (the ``_`` keeps Parquet readers of the store from taking it for window rows), with a
        ``row`` column for the frame row each belongs to. Returns its path; None for a file outside a store."""
        if self.store is None:
            return None
        target = self.path.parent / "_shadow" / f"{name}.parquet"
        target.parent.mkdir(exist_ok=True)
        with replacing(target) as partial:
            predictions.astype("float64").rename_axis("row").reset_index().to_parquet(partial, index=False)
        return str(target)
