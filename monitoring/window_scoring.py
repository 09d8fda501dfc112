"""The champion's predictions for a window's valid rows: those the window already stores, else scored now."""

from __future__ import annotations

import numpy as np
import pandas as pd

from monitoring.checks.champion import Champion
from pipelines.serving.scoring import score_frame

__all__ = ["score_rows", "score_window", "scoring_summary"]


def score_rows(frame: pd.DataFrame, finite: np.ndarray, champion: Champion,
               scored_by: str | None = None) -> tuple[pd.DataFrame, list[float] | None]:
    """The champion's predictions for the finite rows (indexed like them), and the seconds of each scoring batch.

    The predictions already in the window are used when it carries a complete set that this version scored
    (``scored_by``, ``model/version``; None when the window does not say, as a file brought with its own
    predictions); the seconds are then None. A window another version scored (the champion changed since) is scored
    again."""
    columns = list(champion.reference_predictions.columns)
    rows = frame.loc[finite]
    ours = scored_by is None or scored_by == champion.loaded.ref
    if ours and all(c in frame.columns for c in columns) and np.isfinite(rows[columns].to_numpy(dtype=float)).all():
        return rows[columns], None
    features = rows[champion.features].astype("float64")
    predictions, seconds = score_frame(champion.loaded, features)
    predictions.index = rows.index
    return predictions, seconds


def scoring_summary(champion: Champion, rows: int, seconds: list[float] | None) -> dict:
    """What the report says of scoring: rows scored now, by which version, and the p95 latency of a batch."""
    if seconds is None:
        return {"scored_now": 0, "version": "as stored in the window"}
    latency = [s * 1000.0 for s in seconds]
    return {"scored_now": int(rows), "version": champion.loaded.version,
            "batch_latency_p95_ms": float(np.percentile(latency, 95)) if latency else None}


def score_window(frame: pd.DataFrame, finite: np.ndarray, champion: Champion,
                 scored_by: str | None = None) -> tuple[pd.DataFrame, dict]:
    """:func:`score_rows` with its :func:`scoring_summary`: ``(predictions indexed like the finite rows, summary)``."""
    predictions, seconds = score_rows(frame, finite, champion, scored_by)
    return predictions, scoring_summary(champion, len(predictions), seconds)
