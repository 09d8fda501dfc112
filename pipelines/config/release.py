"""How a trained version reaches production: the offline evaluation gate, then the live deployment policy.

``gate:`` judges a candidate on held-out rows before it may serve (``viops evaluate``); ``deploy:`` says what happens
after it passes: promotion at once (``offline``), or shadow windows on live traffic first (docs/deployment.md).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from pipelines.config.base import StrictModel

__all__ = ["GateConfig", "DeployConfig"]


class GateConfig(StrictModel):
    """Thresholds of the evaluation gate (``viops evaluate``; docs/lifecycle.md).

    A candidate passes when every check that applies to it holds: its predictive NLL is not worse than the
    champion's by more than ``nll_tolerance`` nats per datum (skipped when there is no champion) and not above
    ``max_nll`` (when set); ECE <= ``max_ece`` (classifiers); 90%-interval coverage inside ``coverage_90``
    (regression); PSIS k-hat <= ``max_psis_khat`` where the model has one (``null`` turns the check off); every
    posterior SD within ``sd_ratio_to_laplace`` times the Laplace approximation's, where the fit logged a trusted
    Laplace reference (a linear or logistic regression with fixed noise or >= 10 training rows per latent dimension;
    ``null`` turns the check off); no NaN/inf in its predictions; and the p95 latency of single-row ``predict``
    calls <= ``max_latency_p95_ms``.
    """

    nll_tolerance: Annotated[float, Field(ge=0.0)] = 0.05
    max_nll: float | None = None
    max_ece: Annotated[float, Field(gt=0.0, le=1.0)] = 0.10
    coverage_90: tuple[float, float] = (0.80, 0.97)
    max_psis_khat: PositiveFloat | None = 0.7
    sd_ratio_to_laplace: tuple[PositiveFloat, PositiveFloat] | None = (0.85, 1.15)
    max_latency_p95_ms: PositiveFloat = 250.0
    latency_requests: Annotated[int, Field(ge=5)] = 30
    predictive_samples: Annotated[int, Field(ge=16)] = 256  # draws of z for the NLL and calibration estimates
    max_rows: PositiveInt = 20_000  # larger evaluation sets are sampled (seeded) down to this many rows
    seed: int = 0

    @model_validator(mode="after")
    def _band_is_ordered(self):
        low, high = self.coverage_90
        if not 0.0 <= low < high <= 1.0:
            raise ValueError(f"coverage_90 must be [low, high] with 0 <= low < high <= 1, got {list(self.coverage_90)}")
        return self


class DeployConfig(StrictModel):
    """What a retrained version does after it passes the gate (docs/deployment.md).

    ``offline``: it is promoted at once. ``shadow``: it stays ``challenger`` and every monitored window is scored by
    it too; it is promoted after ``shadow_windows`` clean windows, and rejected (never promoted) at its first bad one.
    ``canary``: as ``shadow``, and it also answers a sticky share of the traffic (rows whose key hashes below the
    fraction; ``key_column``, else the row index): ``canary_fraction`` first, then each ``ramp`` fraction, each for
    ``windows_per_step`` clean windows, then it is promoted. A breach of a calibration or latency objective on the
    rows it answered rolls the canary back at once (the candidate is rejected; the champion never moved).

    A window is clean when the challenger breaches no objective on it and its predictive NLL on the window's
    labelled rows is not worse than the champion's by more than ``nll_tolerance`` nats per row: the one-sided
    ``confidence`` upper bound of the mean per-row difference (the same rows scored by both, a paired comparison) is
    at most the tolerance. It is bad when a model objective breaches, or when even the lower bound exceeds the
    tolerance. Windows in between (too few labels, a bad feed, an undecided difference) do not count either way; after
    ``max_shadow_windows`` of them without a verdict the challenger is rejected for want of evidence.
    """

    strategy: Literal["offline", "shadow", "canary"] = "offline"
    shadow_windows: PositiveInt = 3
    max_shadow_windows: PositiveInt = 12
    nll_tolerance: Annotated[float, Field(ge=0.0)] = 0.02
    confidence: Annotated[float, Field(gt=0.5, lt=1.0)] = 0.95
    min_labelled_rows: PositiveInt = 50  # fewer labelled rows in a window: no NLL comparison (the window is undecided)
    canary_fraction: Annotated[float, Field(gt=0.0, le=1.0)] = 0.1
    ramp: list[Annotated[float, Field(gt=0.0, le=1.0)]] = Field(default_factory=lambda: [0.5, 1.0])
    windows_per_step: PositiveInt = 1
    key_column: str | None = None  # the column whose value routes a row (sticky per key); None: the row index

    @model_validator(mode="after")
    def _consistent(self):
        if self.max_shadow_windows < self.shadow_windows:
            raise ValueError(f"max_shadow_windows ({self.max_shadow_windows}) must be at least shadow_windows "
                             f"({self.shadow_windows})")
        steps = self.steps
        if any(b <= a for a, b in zip(steps, steps[1:])):
            raise ValueError(f"canary_fraction then ramp must increase, got {steps}")
        return self

    @property
    def steps(self) -> list[float]:
        """The canary's traffic fractions in order: ``canary_fraction``, then ``ramp``."""
        return [self.canary_fraction, *self.ramp]
