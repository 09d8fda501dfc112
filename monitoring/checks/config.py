"""What ``viops monitor`` checks on each window, and how (``configs/monitoring.yaml``; docs/monitoring.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, PositiveFloat, PositiveInt

from pipelines.config.base import StrictModel
from pipelines.config.loading import read_yaml, validate_section

__all__ = ["DriftCheckConfig", "CalibrationCheckConfig", "VIHealthConfig", "VolumeConfig", "ChecksConfig",
           "load_checks_config"]


class DriftCheckConfig(StrictModel):
    """Evidently drift of the features (and of the champion's predictions) against the reference snapshot.

    ``method``/``threshold`` are passed to Evidently's DataDriftPreset for every column; ``null`` leaves Evidently's
    choice (K-S p-values up to 1,000 reference rows, Wasserstein distance above). The default distance does not grow
    with the window size (docs/monitoring.md#drift).
    """

    enabled: bool = True
    method: str | None = "wasserstein"
    threshold: PositiveFloat | None = 0.3
    drift_share: Annotated[float, Field(gt=0.0, le=1.0)] = 0.5  # Evidently's dataset-drift flag
    row_cap: PositiveInt = 100_000
    predictions: bool = True  # also compare the champion's predictions on the window with those on the reference
    # Fewer finite rows: no drift verdict ("no data"). A distance between 20 rows and the reference is mostly noise.
    min_rows: PositiveInt = 100
    # Rows of the reference snapshot used to measure the champion's sensitivity to each feature (the drift weights).
    sensitivity_rows: PositiveInt = 512
    # CUSUM allowance: the weighted distance a window may add before slow-drift evidence accumulates is
    # cusum_noise x sqrt(1/reference rows + 1/window rows), the sampling noise of a distance between two samples of
    # those sizes, so small windows need more evidence; never below cusum_min_allowance. Stable 500-row windows of the
    # demo model sit near 0.13, under their allowance of 0.19.
    cusum_noise: PositiveFloat = 2.5
    cusum_min_allowance: Annotated[float, Field(ge=0.0)] = 0.05

    def cusum_allowance(self, reference_rows: int, window_rows: int) -> float:
        noise = (1.0 / max(reference_rows, 1) + 1.0 / max(window_rows, 1)) ** 0.5
        return max(self.cusum_min_allowance, self.cusum_noise * noise)

class CalibrationCheckConfig(StrictModel):
    """Calibration on labelled rows: ECE and Brier (classifiers), 90% coverage and PIT (regression), and the change
    against the champion's own held-out split."""

    enabled: bool = True
    predictive_samples: Annotated[int, Field(ge=16)] = 256
    min_rows: PositiveInt = 50  # fewer labelled finite rows: the check reports "not enough labels" instead


class VIHealthConfig(StrictModel):
    """The champion's ELBO and NLL on the window vs its held-out baseline, NaN/inf inputs, label-free uncertainty
    shift, the amortization gap (amortized models) and single-row scoring latency."""

    enabled: bool = True
    predictive_samples: Annotated[int, Field(ge=16)] = 256
    latency_requests: Annotated[int, Field(ge=5)] = 20
    amortization_subsample: PositiveInt = 32
    min_fit_rows: PositiveInt = 50  # labelled rows for the ELBO/NLL against the baseline
    min_uncertainty_rows: PositiveInt = 50  # finite rows for the uncertainty shift


class VolumeConfig(StrictModel):
    """Rows per window against the usual volume: ``usual_rows`` when given, else the median row count of the last
    ``history`` windows that had rows. An empty window is always measured (ratio 0)."""

    usual_rows: PositiveInt | None = None
    history: PositiveInt = 24


class ChecksConfig(StrictModel):
    drift: DriftCheckConfig = DriftCheckConfig()
    calibration: CalibrationCheckConfig = CalibrationCheckConfig()
    vi_health: VIHealthConfig = VIHealthConfig()
    volume: VolumeConfig = VolumeConfig()
    # Calibration and VI-health statistics use at most this many rows of a window (sampled, seeded); every row is
    # still scored and counted for NaN/inf.
    row_cap: PositiveInt = 100_000
    # A Parquet window with more rows than this is read, checked, scored and written back in chunks of chunk_rows
    # rows, never whole; its statistics use a seeded sample of row_cap rows (docs/monitoring.md, "Large windows").
    max_rows_in_memory: PositiveInt = 1_000_000
    chunk_rows: PositiveInt = 200_000
    seed: int = 0


def load_checks_config(path: str | Path | None) -> ChecksConfig:
    """The ``checks:`` section of a monitoring config; defaults when ``path`` is None.

    Raises:
        ConfigError: unreadable file or an invalid key, naming the file and key.
    """
    if path is None:
        return ChecksConfig()
    raw = read_yaml(path, "monitoring config") or {}
    return validate_section(ChecksConfig, raw.get("checks") or {}, path, ("checks",), "monitoring config")
