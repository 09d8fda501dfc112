"""Out-of-core training data: a Parquet file or a folder of Parquet files, read in row groups and never whole.

:func:`scan` makes one pass over the rows. It validates every value, computes the same fingerprint as the in-memory
path, counts the splits, and accumulates the training split's standardisation and each column's range. It keeps
bounded, seeded samples: training rows (the reference snapshot and the diagnostics) and validation and test rows (up
to ``holdout_rows`` each). Rows go to train/validation/test by a seeded hash of their position, so no permutation of
N rows is ever held. Each epoch, :class:`~pipelines.training.loaders.StreamedBatches` reads the row groups in a fresh
order through a shuffle buffer (docs/training.md, "Data larger than memory").
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.config.schema import DataConfig
from pipelines.tables import DataError, select_columns
from pipelines.training.stream_stats import TEST, TRAIN, VALIDATION, ColumnRange, Moments, sample_mask, split_codes

__all__ = ["RowGroup", "TrainStream", "scan"]
#: Rows decoded at a time while scanning and streaming (a row group is read in such batches, never whole).
READ_ROWS = 65_536
#: Rows of the spill file read at a time: blocks in a random order, each much smaller than the shuffle buffer.
SPILL_BLOCK_ROWS = 16_384
@dataclass(frozen=True)
class RowGroup:
    """One Parquet row group: its file, index in that file, first global row and row count."""

    file: str
    index: int
    offset: int
    rows: int


@dataclass
class TrainStream:
    """What training needs of a streamed source: where its rows are, how they split, and what one pass measured.

    Attributes:
        groups: the row groups of the source, in file order (global row positions follow that order).
        columns: the features, then the target.
        train_rows: N, the size of the training split (the ELBO's N / |B| scaling).
        mean, std: per column (features, then target) over the training rows.
        train_range: per-column range over the training rows; ``range``: over every row.
        spill: an anonymous temporary file holding the training rows as float32, row after row, written by the scan
            (``data.streaming.spill``); None to read the Parquet row groups again each epoch. The rows are stored as
            ``(value - spill_shift) / spill_scale``, centred and scaled by the first rows read, so that float32 keeps
            their precision whatever their offset.
    """

    source: str
    groups: list[RowGroup]
    columns: list[str]
    validation: float
    test: float
    seed: int
    train_rows: int
    mean: np.ndarray
    std: np.ndarray
    train_range: ColumnRange
    range: ColumnRange
    samples: dict = field(default_factory=dict)
    spill: object = None
    spill_shift: np.ndarray | None = None
    spill_scale: np.ndarray | None = None

    @property
    def num_rows(self) -> int:
        return sum(group.rows for group in self.groups)

    def standardization(self, classify: bool) -> dict:
        scale = self.std[:-1]
        stats = {"feature_mean": self.mean[:-1].astype(np.float32),
                 "feature_scale": np.where(scale > 0, scale, 1.0).astype(np.float32),
                 "target_mean": 0.0, "target_scale": 1.0}
        if not classify:
            stats.update(target_mean=float(self.mean[-1]), target_scale=float(self.std[-1]) or 1.0)
        return stats

    def read(self, group: RowGroup, reader=None):
        """``(global row positions, float64 values)`` of one row group, in batches of ``READ_ROWS`` rows."""
        import pyarrow.parquet as pq

        reader = reader or pq.ParquetFile(group.file)
        start = group.offset
        for batch in reader.iter_batches(batch_size=READ_ROWS, row_groups=[group.index], columns=self.columns):
            values = np.column_stack([batch.column(i).to_numpy(zero_copy_only=False) for i in range(len(self.columns))
                                      ]).astype(np.float64, copy=False)
            rows = np.arange(start, start + len(values), dtype=np.int64)
            start += len(values)
            yield rows, values

    def train_blocks(self, rng: np.random.Generator):
        """Blocks of training rows ``(rows, features + target)`` in an order drawn from ``rng``, with the ``(shift,
        scale)`` per column that they are stored in: the values are ``block * scale + shift``."""
        width = len(self.columns)
        if self.spill is not None:
            fd, step = self.spill.fileno(), SPILL_BLOCK_ROWS
            for start in rng.permutation(math.ceil(self.train_rows / step)) * step:
                block = np.empty((min(step, self.train_rows - start), width), np.float32)
                if os.preadv(fd, [memoryview(block).cast("B")], int(start) * width * 4) != block.nbytes:
                    raise OSError(f"the spill file of {self.source} ended early")
                yield block, self.spill_shift, self.spill_scale
            return
        import pyarrow.parquet as pq

        readers = {}
        for position in rng.permutation(len(self.groups)):
            group = self.groups[position]
            reader = readers.setdefault(group.file, pq.ParquetFile(group.file))
            for rows, values in self.read(group, reader):
                yield values[split_codes(rows, self.validation, self.test, self.seed) == TRAIN], 0.0, 1.0

    # -- the model-dependent checks of pipelines.training.data, from the pass's summaries ----------------------------

    def where(self, row: int) -> str:
        for group in self.groups:
            if group.offset <= row < group.offset + group.rows:
                return f"row {row - group.offset} of row group {group.index} of {group.file}"
        return f"row {row}"

    def check_counts(self, total_count: int) -> None:
        r = self.range
        for col, name in enumerate(self.columns[:-1]):
            for bad, value, row in ((r.low[col] < 0, r.low[col], r.low_row[col]),
                                    (r.high[col] > total_count, r.high[col], r.high_row[col]),
                                    (r.fraction_row[col] >= 0, None, r.fraction_row[col])):
                if bad:
                    shown = "a fraction" if value is None else repr(float(value))
                    raise DataError(f"data {self.source}: column {name!r} must hold counts 0..{total_count} for this "
                                    f"likelihood; found {shown} at {self.where(int(row))}")

    def count_classes(self, declared: int | None) -> int:
        r, target = self.range, self.columns[-1]
        where = f"data {self.source}: target column {target!r}"
        if r.low[-1] < 0 or r.fraction_row[-1] >= 0:
            row = r.low_row[-1] if r.low[-1] < 0 else r.fraction_row[-1]
            raise DataError(f"{where} must hold class indices 0, 1, ..., C-1 for a classifier; found a value that is "
                            f"not one at {self.where(int(row))}")
        top = int(r.high[-1])
        if declared is not None and top + 1 > declared:
            raise DataError(f"{where} has label {top} but model.num_classes is {declared} (labels must be < "
                            f"num_classes)")
        classes = declared or top + 1
        if classes < 2:
            raise DataError(f"{where} has a single class (every label is 0); a classifier needs at least two")
        return classes

    def constant_columns(self) -> list[tuple[str, float]]:
        r = self.train_range
        return [(name, float(r.low[i])) for i, name in enumerate(self.columns) if r.low[i] == r.high[i]]


def _layout(path: Path, cfg: DataConfig, source: str) -> tuple[list[RowGroup], list[str]]:
    """The row groups of a Parquet file or folder (files in name order), and its columns: the features, then the
    target. The columns are chosen from the first file's schema, and every file must hold them all, numeric: a file
    added to the folder later is checked here, before any row is read, and named when it does not."""
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    files = sorted(ds.dataset(str(path), format="parquet").files) if path.is_dir() else [str(path)]
    if not files:
        raise DataError(f"data {source} holds no Parquet files")
    groups, columns, offset = [], None, 0
    for file in files:
        where = source if file == source else f"{source} (file {file})"
        try:
            reader = pq.ParquetFile(file)
            schema, meta = reader.schema_arrow, reader.metadata
        except Exception as exc:  # pyarrow's own types for a corrupt or foreign file
            raise DataError(f"data {where} could not be read as Parquet: {exc}") from None
        if columns is None:
            columns = [*select_columns(list(schema.names), cfg.target, cfg.features, where), cfg.target]
        missing = [name for name in columns if name not in schema.names]
        if missing:
            raise DataError(f"data {where} lacks column(s) {missing}, which {files[0]} has; every file of the folder "
                            f"needs the same features and target")
        _check_numeric(schema, columns, where)
        for index in range(meta.num_row_groups):
            rows = meta.row_group(index).num_rows
            if rows:
                groups.append(RowGroup(file, index, offset, rows))
                offset += rows
    return groups, columns


def _check_numeric(schema, columns: list[str], where: str) -> None:
    import pyarrow as pa

    for name in columns:
        kind = schema.field(name).type
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
            raise DataError(f"data {where}: column {name!r} is not numeric (Parquet type {kind})")


def scan(cfg: DataConfig) -> tuple[TrainStream, str, dict[str, pd.DataFrame]]:
    """One pass over a Parquet source: ``(stream, fingerprint, {train, validation, test}: in-memory samples)``.

    Raises:
        DataError: the source is missing, has no rows, lacks a column, has a non-numeric or non-finite value (named
            with its file, row group and row), or leaves a split empty.
    """
    path, source = Path(cfg.path), str(cfg.path)
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    try:
        groups, columns = _layout(path, cfg, source)
    except DataError:
        raise
    except Exception as exc:  # pyarrow's own types for a corrupt or foreign file
        raise DataError(f"data {source} could not be read as Parquet: {exc}") from None
    total = sum(group.rows for group in groups)
    if not total:
        raise DataError(f"data {source} has no rows")
    split, streaming = cfg.split, cfg.streaming
    train_share = 1.0 - split.validation - split.test
    keep = {TRAIN: min(1.0, streaming.sample_rows / (total * train_share)),
            VALIDATION: min(1.0, streaming.holdout_rows / max(total * split.validation, 1e-9)),
            TEST: min(1.0, streaming.holdout_rows / max(total * split.test, 1e-9))}
    digest = hashlib.sha256(json.dumps([[c, "float64"] for c in columns]).encode())
    moments, train_range, full_range = Moments(len(columns)), ColumnRange(len(columns)), ColumnRange(len(columns))
    counts, samples = np.zeros(3, np.int64), {code: [] for code in keep}
    spill = tempfile.TemporaryFile(prefix="viops-train-rows-") if streaming.spill else None
    stream = TrainStream(source, groups, columns, split.validation, split.test, split.seed, 0, None, None, train_range,
                         full_range, spill=spill)
    for group in groups:
        for rows, values in stream.read(group):
            _check_finite(values, rows, columns, stream)
            frame = pd.DataFrame(values, columns=columns)
            digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
            codes = split_codes(rows, split.validation, split.test, split.seed)
            counts += np.bincount(codes, minlength=3)
            train = codes == TRAIN
            moments.add(values[train])
            train_range.add(values[train], rows[train])
            if stream.spill is not None:
                _spill(stream, values[train])
            full_range.add(values, rows)
            chosen = sample_mask(rows, split.seed, np.array([keep[TRAIN], keep[VALIDATION], keep[TEST]])[codes])
            for code in keep:
                picked = chosen & (codes == code)
                if picked.any():
                    samples[code].append(frame[picked])
    if counts[TRAIN] < 1 or (split.validation > 0 and counts[VALIDATION] < 1):
        raise DataError(f"data {source} has {total} rows: too few for a {split.validation:.0%} validation / "
                        f"{split.test:.0%} test split with at least one row in each")
    if stream.spill is not None:
        stream.spill.flush()
    stream.train_rows, stream.mean = int(counts[TRAIN]), moments.mean
    stream.std = np.sqrt(moments.m2 / max(moments.count, 1))
    frames = {name: (pd.concat(samples[code], ignore_index=True) if samples[code]
                     else pd.DataFrame(columns=columns, dtype="float64"))
              for name, code in (("train", TRAIN), ("validation", VALIDATION), ("test", TEST))}
    stream.samples = {name: len(frame) for name, frame in frames.items()}
    return stream, digest.hexdigest()[:16], frames


def _spill(stream: TrainStream, values: np.ndarray) -> None:
    """Append training rows to the spill file, as float32 in the units of the first rows read."""
    if stream.spill_shift is None:
        stream.spill_shift = values.mean(0) if len(values) else np.zeros(values.shape[1])
        spread = values.std(0) if len(values) else np.ones(values.shape[1])
        stream.spill_scale = np.where(spread > 0, spread, 1.0)
    stream.spill.write(((values - stream.spill_shift) / stream.spill_scale).astype(np.float32).data)


def _check_finite(values: np.ndarray, rows: np.ndarray, columns: list[str], stream: TrainStream) -> None:
    finite = np.isfinite(values)
    if finite.all():
        return
    col = int(np.flatnonzero(~finite.all(0))[0])
    first = int(rows[np.argmin(finite[:, col])])
    raise DataError(f"data {stream.source}: column {columns[col]!r} has a missing or non-finite value (NaN/inf) at "
                    f"{stream.where(first)}")
