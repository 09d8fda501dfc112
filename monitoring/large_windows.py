"""Windows too large to hold in memory: read, checked, scored and written back in chunks; judged on a sample.

A Parquet window with more than ``checks.max_rows_in_memory`` rows is read ``checks.chunk_rows`` rows at a time.
Every row of every chunk is checked against the schema and counted, every valid row is scored, and, in a window
store, the scored chunks are written to a new copy of the window that replaces it once whole. The checks then run
on a seeded sample of about ``row_cap`` valid rows (their features, predictions and labels), which is what they use
of any window above ``row_cap`` rows (monitoring/monitor.py), so the statistics are the same kind as in memory and
the memory is bounded by the chunk and the sample, not the window.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pandas as pd

from monitoring.checks.champion import Champion
from monitoring.checks.config import ChecksConfig
from monitoring.checks.inputs import WindowRows, check_inputs
from monitoring.checks.results import InputsResult, WindowReport
from monitoring.window_scoring import score_rows, scoring_summary
from monitoring.windows import Window
from pipelines.training.stream_stats import sample_mask
from pipelines.workspace import replacing

__all__ = ["is_large", "check_large_window"]


def is_large(path: str | Path, config: ChecksConfig) -> bool:
    """Whether ``path`` is a Parquet window with more than ``config.max_rows_in_memory`` rows (read from its footer)."""
    import pyarrow.parquet as pq

    path = Path(path)
    if path.suffix.lower() not in (".parquet", ".pq") or not path.is_file():
        return False
    try:
        return pq.ParquetFile(path).metadata.num_rows > config.max_rows_in_memory
    except Exception:  # unreadable: Window.read names the problem
        return False


class _Totals:
    """Row counts of the window's chunks, summed."""

    def __init__(self):
        self.rows = self.finite = self.values = self.labelled = self.invalid_labels = 0
        self.by_column: dict[str, int] = {}
        self.problems: dict[str, str] = {}

    def add(self, inputs: InputsResult, labelled: int, invalid: int) -> None:
        self.rows += inputs.rows
        self.finite += inputs.finite_rows
        self.values += inputs.nonfinite_values
        self.labelled += labelled
        self.invalid_labels += invalid
        for column, count in inputs.nonfinite_by_column.items():
            self.by_column[column] = self.by_column.get(column, 0) + count
        for column, problem in inputs.schema_problems.items():  # the first chunk's description of each column
            self.problems.setdefault(column, problem)

    def inputs(self, usual: float | None) -> InputsResult:
        return InputsResult(rows=self.rows, finite_rows=self.finite, nonfinite_values=self.values,
                            nonfinite_fraction=(self.rows - self.finite) / self.rows if self.rows else 0.0,
                            nonfinite_by_column=self.by_column, schema_problems=self.problems,
                            labelled_rows=self.labelled, invalid_labels=self.invalid_labels, usual_rows=usual,
                            volume_ratio=self.rows / usual if usual else None)


class _ScoredCopy:
    """The window with the champion's prediction columns, written chunk by chunk to a partial file that replaces the
    window's file when ``stack`` closes without an error (a reader never sees half a window; on an error the partial
    file is removed and the window stays as it was)."""

    def __init__(self, window: Window, stack: contextlib.ExitStack):
        self.window, self.stack, self.writer, self.schema = window, stack, None, None

    def write(self, frame: pd.DataFrame, predictions: pd.DataFrame) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        scored = frame.copy()
        for column in predictions.columns:
            scored[column] = predictions[column].astype("float64").reindex(scored.index)
        table = pa.Table.from_pandas(scored, preserve_index=False)
        if self.writer is None:
            partial = self.stack.enter_context(replacing(self.window.path))
            self.writer, self.schema = pq.ParquetWriter(partial, table.schema), table.schema
            self.stack.callback(self.writer.close)  # closed before the rename (the stack unwinds last-in first)
        self.writer.write_table(table.cast(self.schema))

    def record(self, scored_by: str) -> bool:
        """After the rename: the partition says which version scored it. False when nothing was written."""
        if self.writer is None:
            return False
        store = self.window.store
        store.write_meta(self.window.start, {**store.meta(self.window.start), "scored_by": scored_by})
        return True


def check_large_window(window: Window, champion: Champion, config: ChecksConfig, context) -> WindowReport:
    """:func:`monitoring.monitor.check_window` for a window read ``config.chunk_rows`` rows at a time.

    Raises:
        DataError: the window lacks a feature column of the champion (found in its first chunk, before anything is
            written).
    """
    import pyarrow.parquet as pq

    from monitoring.monitor import judge

    source = pq.ParquetFile(window.path)
    keep = min(1.0, config.row_cap / max(source.metadata.num_rows, 1))
    totals, seconds, features, predictions, labelled = _Totals(), [], [], [], []
    scored, offset, chunks = True, 0, 0
    columns = list(champion.reference_predictions.columns)
    # A window that holds this version's predictions is read as it is; any other is copied with the predictions.
    scored_by = window.scored_by  # the store's metadata, read once
    prescored = scored_by in (None, champion.loaded.ref) and set(columns) <= set(source.schema_arrow.names)
    with contextlib.ExitStack() as stack:
        copy = _ScoredCopy(window, stack) if window.store is not None and not prescored else None
        for batch in _chunks(source, config.chunk_rows):
            chunks += 1
            frame = batch.to_pandas()
            frame.index = pd.RangeIndex(offset, offset + len(frame))
            offset += len(frame)
            inputs, finite = check_inputs(frame, champion)
            chosen = finite & sample_mask(frame.index.to_numpy(), config.seed, np.full(len(frame), keep))
            predicted, batch_seconds = (score_rows(frame, finite, champion, scored_by) if finite.any()
                                        else (pd.DataFrame(columns=columns, dtype="float64"), []))
            scored = scored and batch_seconds is not None
            seconds.extend(batch_seconds or [])
            found, count, invalid = champion.labelled(frame), 0, 0
            if found is not None:
                rows = found.rows[found.rows.index.isin(frame.index[finite])]
                count, invalid = len(rows), found.invalid_labels
                labelled.append(rows[rows.index.isin(frame.index[chosen])])
            totals.add(inputs, count, invalid)
            features.append(frame.loc[chosen, champion.features].astype("float64"))
            predictions.append(predicted.loc[predicted.index.isin(frame.index[chosen])])
            if copy is not None:
                copy.write(frame, predicted)
    written = copy.record(f"{champion.loaded.name}/{champion.loaded.version}") if copy is not None else False
    sampled = pd.concat(features)
    labelled_rows = pd.concat(labelled) if labelled else None
    if labelled_rows is not None and len(labelled_rows) > config.row_cap:
        labelled_rows = labelled_rows.sample(n=config.row_cap, random_state=config.seed)
    rows = WindowRows(totals.inputs(context.usual_rows), sampled, sampled, pd.concat(predictions), labelled_rows)
    scoring = {**scoring_summary(champion, totals.finite, seconds if scored else None), "written_back": written,
               "chunks": chunks, "sampled_rows": int(len(sampled))}
    return judge(window, champion, config, context, rows, scoring, None)


def _chunks(source, rows: int):
    """The file's rows in batches of at most ``rows``, a row group at a time: one reader over the whole file keeps
    what it decoded (pyarrow's allocations grew by ~45 MB per 200,000-row batch), a reader per row group does not."""
    for group in range(source.num_row_groups):
        yield from source.iter_batches(batch_size=rows, row_groups=[group])
