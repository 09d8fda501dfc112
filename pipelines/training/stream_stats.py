"""What one pass over a streamed source accumulates: split assignment by row position, column ranges, moments.

Rows go to train/validation/test by a seeded hash of their global position (splitmix64), so the split of a row does
not depend on how the source is cut into files, row groups or reads, and no permutation of N rows is ever held.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["TRAIN", "VALIDATION", "TEST", "ColumnRange", "Moments", "sample_mask", "split_codes"]

TRAIN, VALIDATION, TEST = 0, 1, 2
_SPLIT_SALT, _SAMPLE_SALT = 0x5EED, 0x5A3F1E


def _uniform(rows: np.ndarray, seed: int, salt: int) -> np.ndarray:
    """A uniform number in [0, 1) for each row position: splitmix64 of the position, the seed and a salt."""
    z = rows.astype(np.uint64) + np.uint64(((seed * 0x9E3779B97F4A7C15) ^ salt) & 0xFFFFFFFFFFFFFFFF)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


def split_codes(rows: np.ndarray, validation: float, test: float, seed: int) -> np.ndarray:
    """``TRAIN``, ``VALIDATION`` or ``TEST`` for each global row position (deterministic in ``seed``)."""
    u = _uniform(rows, seed, _SPLIT_SALT)
    return np.where(u < test, TEST, np.where(u < test + validation, VALIDATION, TRAIN)).astype(np.int8)


def sample_mask(rows: np.ndarray, seed: int, fraction: np.ndarray) -> np.ndarray:
    """Whether each row is in the seeded sample that keeps ``fraction`` (one per row) of its rows."""
    return _uniform(rows, seed, _SAMPLE_SALT) < fraction


@dataclass
class ColumnRange:
    """Per-column minimum and maximum (and where), and the first value that is not an integer."""

    width: int

    def __post_init__(self):
        self.low, self.high = np.full(self.width, np.inf), np.full(self.width, -np.inf)
        self.low_row, self.high_row = np.zeros(self.width, np.int64), np.zeros(self.width, np.int64)
        self.fraction_row = np.full(self.width, -1, np.int64)

    def add(self, values: np.ndarray, rows: np.ndarray) -> None:
        if not len(values):
            return
        lo, hi = values.argmin(0), values.argmax(0)
        cols = np.arange(self.width)
        lower, higher = values[lo, cols] < self.low, values[hi, cols] > self.high
        self.low = np.where(lower, values[lo, cols], self.low)
        self.low_row = np.where(lower, rows[lo], self.low_row)
        self.high = np.where(higher, values[hi, cols], self.high)
        self.high_row = np.where(higher, rows[hi], self.high_row)
        fractional = values != np.round(values)
        for col in np.flatnonzero((self.fraction_row < 0) & fractional.any(0)):
            self.fraction_row[col] = rows[np.argmax(fractional[:, col])]


class Moments:
    """Running per-column mean and sum of squared deviations (Chan et al.'s pairwise update)."""

    def __init__(self, width: int):
        self.count, self.mean, self.m2 = 0, np.zeros(width), np.zeros(width)

    def add(self, values: np.ndarray) -> None:
        n = len(values)
        if not n:
            return
        mean = values.mean(0)
        m2 = ((values - mean) ** 2).sum(0)
        total = self.count + n
        delta = mean - self.mean
        self.m2 += m2 + delta**2 * self.count * n / total
        self.mean += delta * n / total
        self.count = total
