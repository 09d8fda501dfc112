"""How much the champion uses each feature: the weights that turn per-column drift into drift of what the model uses.

A feature's weight is its **permutation sensitivity** on the reference snapshot: the mean absolute change of the
champion's prediction signal (the predictive mean for regression, the class probabilities for classifiers, the
log-marginal for amortized models) when that feature's column is shuffled and the others are left alone. It needs
nothing but the pyfunc, so it holds for every family (linear, BNN, VAE), and for a linear model it is proportional to
``|posterior-mean effect| x feature SD``, the textbook importance. Weights are shares: they sum to 1.

The predictive is sampled with the same seed on every call, so the differences come from the shuffle, not from Monte
Carlo noise.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["feature_weights", "prediction_signal"]


def prediction_signal(kind: str, predictions: pd.DataFrame) -> np.ndarray:
    """The columns of a prediction frame that carry what the model says (rows x outputs)."""
    if kind == "regression":
        columns = ["mean"]
    elif kind == "classification":
        columns = [c for c in predictions.columns if c.startswith("p_")]
    else:
        columns = ["log_marginal"]
    return predictions[columns].to_numpy(dtype=float)


def feature_weights(predict, reference: pd.DataFrame, kind: str, *, rows: int = 512, seed: int = 0
                    ) -> dict[str, float]:
    """Share of the champion's permutation sensitivity per column of ``reference`` (its features, in order).

    ``predict`` maps a feature frame to a prediction frame (the pyfunc's ``predict``). At most ``rows`` reference rows
    are used (seeded). A model insensitive to every feature gets equal weights.
    """
    columns = list(reference.columns)
    sample = reference.sample(n=rows, random_state=seed) if len(reference) > rows else reference
    sample = sample.reset_index(drop=True)
    base = prediction_signal(kind, predict(sample))
    scale = np.abs(base).mean() or 1.0
    rng = np.random.default_rng(seed)
    effects = {}
    for column in columns:
        shuffled = sample.copy()
        shuffled[column] = rng.permutation(shuffled[column].to_numpy())
        effects[column] = float(np.abs(prediction_signal(kind, predict(shuffled)) - base).mean() / scale)
    total = sum(effects.values())
    if not np.isfinite(total) or total <= 0:
        return {column: 1.0 / len(columns) for column in columns}
    return {column: effect / total for column, effect in effects.items()}
