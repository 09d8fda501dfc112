"""Every row of a window: missing feature columns are an error, NaN/inf values are counted, and only finite rows
are scored and passed on to the other checks (:class:`WindowRows`, prepared once per window)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from monitoring.checks.champion import Champion
from monitoring.checks.results import InputsResult
from pipelines.tables import DataError

__all__ = ["WindowRows", "check_inputs"]


@dataclass(frozen=True)
class WindowRows:
    """What the checks read from one window, prepared once.

    Attributes:
        inputs: the row counts of :func:`check_inputs` (with the labelled-row counts).
        features: the finite rows' features (float64); sampled: at most ``row_cap`` of them (seeded).
        predictions: the champion's predictions for the finite rows.
        labelled: at most ``row_cap`` labelled rows (features and target), or None when labels cannot exist (no
            target column, or an amortized model).
    """

    inputs: InputsResult
    features: pd.DataFrame
    sampled: pd.DataFrame
    predictions: pd.DataFrame
    labelled: pd.DataFrame | None


def check_inputs(frame: pd.DataFrame, champion: Champion) -> tuple[InputsResult, np.ndarray]:
    """Missing columns are an error; NaN/inf values are counted. Returns ``(counts, mask of finite rows)``.

    Raises:
        DataError: the window lacks a feature column of the champion.
    """
    missing = [c for c in champion.features if c not in frame.columns]
    if missing:
        raise DataError(f"window lacks feature column(s) {missing} of {champion.loaded.ref}; it has "
                        f"{list(frame.columns)}")
    values = frame[champion.features].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(values)
    finite_rows = ~bad.any(axis=1)
    per_column = {c: int(n) for c, n in zip(champion.features, bad.sum(axis=0)) if n}
    counts = InputsResult(rows=int(len(frame)), finite_rows=int(finite_rows.sum()), nonfinite_values=int(bad.sum()),
                          nonfinite_fraction=float(bad.any(axis=1).mean()) if len(frame) else 0.0,
                          nonfinite_by_column=per_column)
    return counts, finite_rows
