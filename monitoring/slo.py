"""Service-level objectives over production windows (``configs/slo.yaml``; docs/monitoring.md#slos).

Each objective turns one indicator of the window report (a dotted path into its typed results, such as
``drift.share`` or ``calibration.coverage_90``; checked against the result types when the file is loaded, see
:mod:`monitoring.results`) into a good/bad event per window: good when the value satisfies ``max``/``min``
(either or both). The objective asks that at least ``target`` of the windows in its period (the last ``window``
windows) be good, so its error budget is ``1 - target`` of them.

Per objective and window :func:`evaluate_slos` returns:

- ``status``: ``ok``; ``breach`` (this window is bad); ``budget_exhausted`` (this window is good but the period has
  used up its budget); or ``no_data`` (the indicator does not exist for this window, e.g. calibration without
  labels). Windows without data count neither as good nor as bad.
- ``burn_rate``: the bad fraction over the period divided by the budget ``1 - target``. At 1.0 the budget runs out
  exactly at the end of the period.
- ``budget_remaining``: ``1 - bad / (budget · windows with data)``. It is negative once overspent.
- ``reason``: one sentence for the on-call engineer.

The Prometheus rules compute the multi-window burn rates from the exported good/bad counts; this evaluator gives
the same quantities per window for the decision and the incident record.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

from pydantic import Field, PositiveInt, model_validator

from monitoring.checks.indicators import (
    IndicatorError,
    check_indicator,
    evidence_for,
    indicator_detail,
    indicator_value,
)
from monitoring.checks.results import WindowReport
from pipelines.config.base import StrictModel
from pipelines.config.loading import read_yaml, validate_section

__all__ = ["Objective", "SLOConfig", "SLOStatus", "load_slos", "evaluate_slos"]


class Objective(StrictModel):
    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]
    indicator: str  # dotted path into the window report's typed results (monitoring.results)
    description: str = ""
    max: float | None = None  # good when value <= max
    min: float | None = None  # good when value >= min
    target: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.95
    window: PositiveInt = 24  # windows in the SLO period
    unit: str = ""

    @model_validator(mode="after")
    def _indicator_exists(self):
        try:
            check_indicator(self.indicator)
        except IndicatorError as exc:
            raise ValueError(str(exc)) from None
        return self

    @model_validator(mode="after")
    def _has_a_bound(self):
        if self.max is None and self.min is None:
            raise ValueError(f"objective {self.name}: give max, min or both")
        if self.max is not None and self.min is not None and self.min > self.max:
            raise ValueError(f"objective {self.name}: min {self.min} is above max {self.max}")
        return self

    def good(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        return (self.max is None or value <= self.max) and (self.min is None or value >= self.min)

    def bound_text(self) -> str:
        if self.max is not None and self.min is not None:
            return f"in [{self.min:g}, {self.max:g}]"
        return f"<= {self.max:g}" if self.max is not None else f">= {self.min:g}"


class SLOConfig(StrictModel):
    objectives: list[Objective] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self):
        names = [o.name for o in self.objectives]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"objective names must be unique; repeated: {duplicated}")
        return self


def load_slos(path: str | Path) -> SLOConfig:
    """Load and validate an SLO file.

    Raises:
        ConfigError: naming the file and the objective/key that is wrong.
    """
    return validate_section(SLOConfig, read_yaml(path, "SLO") or {}, path, what="SLO file")


@dataclass(frozen=True)
class SLOStatus:
    name: str
    indicator: str
    status: str  # ok | breach | budget_exhausted | no_data
    value: float | None
    threshold: str
    good: bool | None
    bad_in_period: int
    windows_in_period: int
    burn_rate: float | None
    budget_remaining: float | None
    reason: str

    def to_json(self) -> dict:
        return asdict(self)


def evaluate_slos(slos: SLOConfig, report: WindowReport, history: list[dict] | None = None) -> list[SLOStatus]:
    """Evaluate every objective on ``report`` (this window), given earlier windows' ``{objective: good}`` records
    (``history``, oldest first; ``None`` where a window had no data)."""
    history = history or []
    out = []
    for objective in slos.objectives:
        value = indicator_value(report, objective.indicator)
        good = None if value is None else objective.good(value)
        earlier = [h.get(objective.name) for h in history[-(objective.window - 1):]] if objective.window > 1 else []
        events = [e for e in [*earlier, good] if e is not None]
        bad = sum(1 for e in events if not e)
        budget = 1.0 - objective.target
        burn = (bad / len(events)) / budget if events else None
        remaining = 1.0 - bad / (budget * len(events)) if events else None
        if good is None:
            status = "no_data"
            reason = f"{objective.name}: no {objective.indicator} in this window"
            evidence = report.evidence.get(evidence_for(objective.indicator) or "")
            if evidence is not None and not evidence.enough:
                reason += f" ({evidence.rows} rows < the {evidence.min_rows} its check needs)"
        elif not good:
            status = "breach"
            reason = (f"{objective.name}: {objective.indicator} = {value:.4g}{objective.unit} is not "
                      f"{objective.bound_text()}{objective.unit}{indicator_detail(report, objective.indicator)}")
        elif remaining is not None and remaining <= 0:
            status = "budget_exhausted"
            reason = f"{objective.name}: within bounds now, but the error budget of the period is spent"
        else:
            status = "ok"
            reason = f"{objective.name}: {objective.indicator} = {value:.4g}{objective.unit} {objective.bound_text()}"
        if events and status != "no_data":
            reason += (f"; {bad} of the last {len(events)} windows bad, burn rate {burn:.1f}x, "
                       f"{max(remaining, 0.0):.0%} of the error budget left")
        out.append(SLOStatus(objective.name, objective.indicator, status, value, objective.bound_text(), good, bad,
                             len(events), burn, remaining, reason))
    return out
