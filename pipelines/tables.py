"""Tables of rows: reading CSV/Parquet, checking columns, fingerprints, and which rows carry a usable label.

Every reader of data (training, scoring, the gate, monitoring) fails with a :class:`DataError` that names the file,
the column and the problem, before anything is trained, scored or registered.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.errors import NotRetryable

__all__ = ["DataError", "read_table", "check_columns", "select_columns", "fingerprint", "LabelledRows",
           "usable_labelled_rows"]


class DataError(ValueError, NotRetryable):
    """The data cannot be used; the message names the source, the column and the problem."""


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV or Parquet file.

    Raises:
        DataError: the file is missing, empty, of another format, or cannot be parsed.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            frame = pd.read_csv(path)
            _unique_header(path)
        elif suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        else:
            raise DataError(f"data file {path}: unsupported format {suffix!r}; use .csv or .parquet")
    except pd.errors.EmptyDataError:
        raise DataError(f"data file {path} is empty (no header, no rows)") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        raise DataError(f"data file {path} could not be parsed: {exc}") from None
    except Exception as exc:  # pyarrow raises its own types for corrupt Parquet
        if isinstance(exc, DataError):
            raise
        raise DataError(f"data file {path} could not be read: {exc}") from None
    return frame


def _unique_header(path: Path) -> None:
    """pandas renames a repeated CSV column ``a`` to ``a.1``: refuse the file instead, naming the repeats."""
    import csv

    with path.open(newline="", encoding="utf-8") as handle:
        header = next(csv.reader(handle), [])
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise DataError(f"data file {path}: column name(s) {repeated} appear more than once in the header; "
                        f"each column needs its own name")


def _row_hint(source: str, row: int) -> str:
    return f"row {row} (line {row + 2} of the CSV)" if source.endswith(".csv") else f"row {row}"


def check_columns(frame: pd.DataFrame, columns: list[str], source: str, expected: str = "") -> None:
    """Check that ``frame`` has rows and that each of ``columns`` is present, numeric and finite.

    Raises:
        DataError: naming the source, the column and (for bad values) the first bad row; ``expected`` is appended to
            a missing-column error to say what was expected.
    """
    present = [str(c) for c in frame.columns]
    if len(frame) == 0:
        raise DataError(f"data {source} has no rows (columns: {', '.join(present) or 'none'})")
    missing = [c for c in columns if c not in present]
    if missing:
        raise DataError(f"data {source}: column(s) {missing} not found; columns are: {', '.join(present)}"
                        + (f" ({expected})" if expected else ""))
    for column in columns:
        values = frame[column]
        if not (pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)):
            coerced = pd.to_numeric(values, errors="coerce")
            bad = values[coerced.isna() & values.notna()]
            example = f"; first non-numeric value {bad.iloc[0]!r} at {_row_hint(source, int(bad.index[0]))}" if len(
                bad
            ) else ""
            raise DataError(f"data {source}: column {column!r} is not numeric (dtype {values.dtype}){example}")
        finite = np.isfinite(values.to_numpy(dtype=float))
        if not finite.all():
            first = int(np.flatnonzero(~finite)[0])
            raise DataError(
                f"data {source}: column {column!r} has {int((~finite).sum())} missing or non-finite value(s) "
                f"(NaN/inf), first at {_row_hint(source, first)}"
            )


def select_columns(columns: list[str], target: str, features: list[str] | None, source: str) -> list[str]:
    """The feature columns of a table with ``columns``: ``features`` as configured, else every column but the target.

    Raises:
        DataError: the target or a configured feature is missing, the target is also a feature, or no feature is left.
    """
    if target not in columns:
        raise DataError(f"data {source}: target column {target!r} not found; columns are: {', '.join(columns)}")
    chosen = list(features) if features else [c for c in columns if c != target]
    missing = [c for c in chosen if c not in columns]
    if missing:
        raise DataError(f"data {source}: feature column(s) {missing} not found; columns are: {', '.join(columns)}")
    if target in chosen:
        raise DataError(f"data {source}: column {target!r} is both the target and a feature")
    if not chosen:
        raise DataError(f"data {source} has no feature columns besides the target {target!r}")
    return chosen


def fingerprint(frame: pd.DataFrame) -> str:
    """Content hash of a table: column names, dtypes and every value (row order matters)."""
    digest = hashlib.sha256()
    digest.update(json.dumps([[str(c), str(t)] for c, t in frame.dtypes.items()]).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class LabelledRows:
    """The rows of a table that can be learned from or scored against their label.

    Attributes:
        rows: the feature columns and the target of those rows, as float64, indexed like the source table.
        invalid_labels: rows whose label is finite but not a class the model has (classifiers).
    """

    rows: pd.DataFrame
    invalid_labels: int = 0


def usable_labelled_rows(frame: pd.DataFrame, features: list[str], target: str, *,
                         num_classes: int | None = None) -> LabelledRows:
    """The one rule for labelled rows, shared by ``viops prepare --extra-data`` and the monitor's checks: every
    feature and the target are present and finite (non-numeric cells count as missing), and for a classifier
    (``num_classes``) the label is a class index ``0..num_classes-1``. A table without the target has none.
    """
    if target not in frame.columns:
        return LabelledRows(pd.DataFrame(columns=[*features, target], dtype="float64"))
    values = frame[[*features, target]].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    ok = np.isfinite(values).all(axis=1)
    invalid = 0
    if num_classes is not None:
        labels = values[:, -1]
        known = ok & (labels == np.round(labels)) & (labels >= 0) & (labels < num_classes)
        invalid = int((ok & ~known).sum())
        ok = known
    rows = pd.DataFrame(values[ok], columns=[*features, target], index=frame.index[ok])
    return LabelledRows(rows, invalid)
