"""Simulated production traffic: windows drawn from a dataset's held-out rows under named scenarios.

``viops simulate --config configs/scenarios/<name>.yaml --out DIR`` writes ``windows`` windows of ``rows_per_window``
rows into a :class:`~monitoring.windows.WindowStore`. Rows are drawn with replacement from the rows the model never
trained on (the validation and test splits of the training config's data, split the same way), so a ``stable``
window looks like data the model has not seen, drawn from the same distribution as the training data. From window
``start`` on (0-based), the scenario changes the data:

- ``stable``: nothing changes.
- ``covariate_shift``: the chosen ``features`` are shifted by ``shift`` training SDs and multiplied by ``scale``
  around their training mean; the labels keep their relation to the original features, as when a sub-population
  grows in production. One key feature (``single_feature``) or one the model barely uses (``irrelevant_feature``)
  are configs of this kind.
- ``gradual``: like ``covariate_shift``, but the shift grows by ``shift`` training SDs per window: ``shift`` at
  window ``start``, ``2 * shift`` at the next, and so on (slow drift).
- ``concept_shift``: the label relation changes. Regression: ``y += slope * SD(y) * z_f``, with ``z_f`` the first
  chosen feature, standardised. Classification: a ``fraction`` of labels are reassigned to another class.
- ``label_noise``: the labels get noisier. Regression: the residual SD around a least-squares fit of the training
  split is multiplied by ``noise`` (Gaussian noise is added). Classification: a ``fraction`` of labels are
  reassigned at random.
- ``nan_burst``: for ``duration`` windows, a ``fraction`` of the values of the chosen features are NaN or ±inf.
- ``low_volume``: for ``duration`` windows, only a ``fraction`` of the usual rows arrive.
- ``empty``: for ``duration`` windows, no rows arrive (a feed outage).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import pandas as pd
from pydantic import Field, PositiveInt, model_validator

from pipelines.config.base import ConfigError, StrictModel
from pipelines.config.loading import load_config, read_yaml, validate_section
from pipelines.config.schema import TrainConfig
from pipelines.training.data import prepare

__all__ = ["ScenarioConfig", "load_scenario", "simulate"]

SCENARIOS = ("stable", "covariate_shift", "gradual", "concept_shift", "label_noise", "nan_burst", "low_volume",
             "empty")
#: Scenarios that last ``duration`` windows from ``start``; the others last to the end.
BURSTS = ("nan_burst", "low_volume", "empty")


class ScenarioConfig(StrictModel):
    """One simulated production stream (``configs/scenarios/*.yaml``)."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")]
    training_config: str  # the model's training config: its data and split give the rows to draw from
    scenario: Literal[SCENARIOS] = "stable"
    windows: PositiveInt = 12
    rows_per_window: PositiveInt = 500
    start: Annotated[int, Field(ge=0)] = 6  # first affected window (0-based)
    features: list[str] = Field(default_factory=list)  # affected features (default: the first two)
    shift: float = 2.0  # covariate_shift: in training SDs; gradual: training SDs per window
    scale: Annotated[float, Field(gt=0.0)] = 1.0  # covariate_shift
    slope: float = 1.0  # concept_shift (regression): SDs of y per SD of the feature
    # concept_shift/label_noise (classes), nan_burst, low_volume
    fraction: Annotated[float, Field(gt=0.0, le=1.0)] = 0.3
    noise: Annotated[float, Field(ge=1.0)] = 2.0  # label_noise (regression): factor on the residual SD
    duration: PositiveInt = 1  # nan_burst, low_volume, empty: affected windows
    window_start: datetime = datetime(2026, 1, 1, tzinfo=timezone.utc)
    window_every: timedelta = timedelta(hours=1)
    with_labels: bool = True
    seed: int = 0

    @model_validator(mode="after")
    def _start_inside(self):
        if self.scenario != "stable" and self.start >= self.windows:
            raise ValueError(f"start ({self.start}) must be a window index below windows ({self.windows})")
        return self


def load_scenario(path: str | Path) -> tuple[ScenarioConfig, TrainConfig]:
    """Load a scenario config and the training config it names (relative paths are relative to the scenario file).

    Raises:
        ConfigError: unreadable file, invalid keys, or features the data does not have.
    """
    path = Path(path)
    scenario = validate_section(ScenarioConfig, read_yaml(path, "scenario") or {}, path, what="scenario")
    training_path = Path(scenario.training_config)
    if not training_path.is_absolute():
        training_path = (path.parent / training_path).resolve()
    return scenario, load_config(training_path)


def _windows_times(s: ScenarioConfig) -> list[datetime]:
    return [s.window_start + i * s.window_every for i in range(s.windows)]


def _residual_sd(train: pd.DataFrame, features: list[str], target: str) -> float:
    """SD of the residuals of a least-squares fit of ``target`` on ``features`` (the label noise to scale)."""
    x = np.c_[np.ones(len(train)), train[features].to_numpy(dtype=float)]
    y = train[target].to_numpy(dtype=float)
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    return float(np.std(y - x @ coef))


def simulate(scenario: ScenarioConfig, training: TrainConfig, out: str | Path):
    """Write the scenario's windows to a window store at ``out``; returns the store."""
    from monitoring.windows import WindowStore

    data = prepare(training.data)
    pool = pd.concat([data.validation, data.test], ignore_index=True)
    if pool.empty:
        pool = data.train
    features, target = list(data.features), data.target
    unknown = [f for f in scenario.features if f not in features]
    if unknown:
        raise ConfigError(f"scenario {scenario.name}: feature(s) {unknown} are not in the data; it has {features}")
    chosen = scenario.features or features[:2]
    train_x = data.train[features]
    mean, sd = train_x.mean(), train_x.std(ddof=0).replace(0.0, 1.0)
    classify = training.model.task == "classification"
    classes = np.sort(data.train[target].unique()) if classify else None
    y_sd = float(data.train[target].std(ddof=0)) or 1.0
    # Rows and perturbations draw from separate streams, so scenarios with one seed share their rows: a window of
    # `concept_shift` differs from the same window of `stable` only by the change itself.
    rows_rng, rng = np.random.default_rng(scenario.seed), np.random.default_rng([scenario.seed, 1])
    residual_sd = _residual_sd(data.train, features, target) if not classify else None
    store = WindowStore(out)
    for index, when in enumerate(_windows_times(scenario)):
        frame = pool.iloc[rows_rng.integers(0, len(pool), scenario.rows_per_window)].reset_index(drop=True)
        frame = frame[[*features, target]].astype({c: "float64" for c in features})
        kind = scenario.scenario
        affected = kind != "stable" and index >= scenario.start
        if kind in BURSTS:
            affected = scenario.start <= index < scenario.start + scenario.duration
        if affected and kind in ("covariate_shift", "gradual"):
            shift = scenario.shift * (index - scenario.start + 1 if kind == "gradual" else 1)
            for f in chosen:
                frame[f] = mean[f] + (frame[f] - mean[f]) * scenario.scale + shift * sd[f]
        elif affected and kind in ("concept_shift", "label_noise") and classify:
            flip = rng.random(len(frame)) < scenario.fraction
            offsets = rng.integers(1, len(classes), flip.sum())
            positions = np.searchsorted(classes, frame.loc[flip, target].to_numpy())
            frame.loc[flip, target] = classes[(positions + offsets) % len(classes)]
        elif affected and kind == "concept_shift":
            z = (frame[chosen[0]] - mean[chosen[0]]) / sd[chosen[0]]
            frame[target] = frame[target] + scenario.slope * y_sd * z
        elif affected and kind == "label_noise":
            extra = residual_sd * np.sqrt(scenario.noise ** 2 - 1.0)
            frame[target] = frame[target] + rng.normal(0.0, extra, len(frame))
        elif affected and kind == "nan_burst":
            for f in chosen:
                hit = rng.random(len(frame)) < scenario.fraction
                frame.loc[hit, f] = rng.choice([np.nan, np.inf, -np.inf], hit.sum())
        elif affected and kind in ("low_volume", "empty"):
            keep = 0 if kind == "empty" else max(1, int(round(scenario.fraction * len(frame))))
            frame = frame.iloc[:keep]
        if not scenario.with_labels:
            frame = frame.drop(columns=[target])
        store.write(when, frame, meta={"scenario": scenario.name, "kind": kind, "index": index,
                                       "affected": bool(affected), "target": target, "features": features})
    return store
