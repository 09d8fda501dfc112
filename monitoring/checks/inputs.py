"""Every row of a window, checked against the training schema at the boundary: missing feature columns are an error;
NaN/inf values are counted; a column whose values are not numbers as trained (bool, str, object cells) or a value
beyond the reference's bound (:data:`REFERENCE_SDS` SDs from its mean) is a schema problem, named per column. Only
rows whose features are all valid are scored and passed on to the other checks (:class:`WindowRows`, prepared once
per window): nothing else reaches the model."""

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


#: A value further than this many reference SDs from the reference mean cannot be a measurement of the same feature
#: (1e308 from an overflowing producer, a unit changed by orders of magnitude): it is a schema problem.
REFERENCE_SDS = 1e6


def _numbers(values: pd.Series) -> tuple[np.ndarray, str | None]:
    """The column as float64 (NaN where a cell is not a number) and the schema problem of its type, if any."""
    if pd.api.types.is_bool_dtype(values):
        return np.full(len(values), np.nan), "dtype bool; the model was trained on numbers"
    if pd.api.types.is_numeric_dtype(values):
        return values.to_numpy(dtype=float), None
    # An object column (CSV has no types) may hold numbers as text; a cell that is not one, or is a bool, is wrong.
    coerced = pd.to_numeric(values.map(lambda v: np.nan if isinstance(v, (bool, np.bool_)) else v), errors="coerce")
    wrong = values.notna() & coerced.isna()
    if wrong.any():
        first = int(np.flatnonzero(wrong.to_numpy())[0])
        return np.full(len(values), np.nan), (f"dtype {values.dtype}: {int(wrong.sum())} cell(s) are not numbers, "
                                              f"first {values.iloc[first]!r} at row {first}")
    return coerced.to_numpy(dtype=float), None


def _bounds(reference: pd.DataFrame, features: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per feature, the reference mean and the largest distance from it a valid value may have."""
    ref = reference[features].to_numpy(dtype=float) if len(reference) else np.zeros((0, len(features)))
    mean = np.nanmean(ref, axis=0) if len(ref) else np.zeros(len(features))
    sd = np.nanstd(ref, axis=0) if len(ref) else np.ones(len(features))
    scale = np.maximum(sd, 1e-6 * np.maximum(np.abs(mean), 1.0))
    return mean, REFERENCE_SDS * scale


def check_inputs(frame: pd.DataFrame, champion: Champion) -> tuple[InputsResult, np.ndarray]:
    """Missing columns are an error; NaN/inf values are counted; schema problems are named per column (their values
    count as invalid). Returns ``(counts, mask of rows whose features are all valid)``.

    Raises:
        DataError: the window lacks a feature column of the champion.
    """
    features = champion.features
    missing = [c for c in features if c not in frame.columns]
    if missing:
        raise DataError(f"window lacks feature column(s) {missing} of {champion.loaded.ref}; it has "
                        f"{list(frame.columns)}")
    problems: dict[str, str] = {}
    columns = []
    for column in features:
        numbers, problem = _numbers(frame[column])
        if problem:
            problems[column] = problem
        columns.append(numbers)
    values = np.column_stack(columns) if columns else np.zeros((len(frame), 0))
    mean, bound = _bounds(champion.reference, features)
    with np.errstate(invalid="ignore", over="ignore"):
        beyond = np.isfinite(values) & (np.abs(values - mean) > bound)
    for j in np.flatnonzero(beyond.any(axis=0)):
        first = values[np.flatnonzero(beyond[:, j])[0], j]
        problems[features[j]] = (f"{int(beyond[:, j].sum())} value(s) beyond {REFERENCE_SDS:.0e} reference SDs "
                                 f"of its mean (first {first:.6g})")
    bad = ~np.isfinite(values) | beyond
    finite_rows = ~bad.any(axis=1)
    per_column = {c: int(n) for c, n in zip(features, bad.sum(axis=0)) if n}
    counts = InputsResult(rows=int(len(frame)), finite_rows=int(finite_rows.sum()), nonfinite_values=int(bad.sum()),
                          nonfinite_fraction=float(bad.any(axis=1).mean()) if len(frame) else 0.0,
                          nonfinite_by_column=per_column, schema_problems=problems)
    return counts, finite_rows
