"""The gate's verdict: every threshold of the ``gate:`` section applied to a candidate's metrics, with reasons.

:func:`apply_thresholds` turns the candidate's (and the champion's) metrics on the same rows into one
``pass | fail | skipped: why`` per check and one sentence per failure; :class:`Verdict` carries them with the
metrics and the thresholds, and is what ``viops evaluate`` prints, logs and tags on the version.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pipelines.config.schema import GateConfig
from pipelines.registry.audit import utc_now

__all__ = ["Verdict", "apply_thresholds", "sd_ratio_check"]


@dataclass
class Verdict:
    """The gate's decision on a candidate version.

    Attributes:
        passed: every applicable threshold holds.
        reasons: one sentence per failed threshold (empty when passed).
        metrics: ``{"candidate": {...}, "champion": {...} or None}``, computed on the same rows.
        checks: ``{check: "pass" | "fail" | "skipped: why"}`` for every threshold.
    """

    passed: bool
    reasons: list[str]
    metrics: dict
    checks: dict[str, str]
    model: str
    candidate_version: str
    champion_version: str | None
    data: dict
    thresholds: dict
    evaluation_run_id: str | None = None
    time: str = field(default_factory=utc_now)

    def to_json(self) -> dict:
        return {
            "passed": self.passed, "reasons": self.reasons, "metrics": self.metrics, "checks": self.checks,
            "model": self.model, "candidate_version": self.candidate_version,
            "champion_version": self.champion_version, "data": self.data, "thresholds": self.thresholds,
            "evaluation_run_id": self.evaluation_run_id, "time": self.time,
        }

    def summary(self) -> str:
        against = f"champion version {self.champion_version}" if self.champion_version else "no champion"
        head = (f"{self.model} version {self.candidate_version} vs {against} on {self.data['rows']} rows of "
                f"{self.data['source']}: {'PASSED' if self.passed else 'REJECTED'}")
        lines = [head]
        for who in ("candidate", "champion"):
            values = self.metrics.get(who)
            if values:
                shown = ", ".join(f"{k} {v:.4g}" for k, v in values.items() if isinstance(v, float))
                lines.append(f"  {who}: {shown}")
        lines += [f"  - {reason}" for reason in self.reasons]
        return "\n".join(lines)


def apply_thresholds(cand: dict, champ: dict | None, champion_version: str | None, gate: GateConfig
            ) -> tuple[dict[str, str], list[str]]:
    checks: dict[str, str] = {}
    reasons: list[str] = []

    def check(name: str, ok: bool, reason: str) -> None:
        checks[name] = "pass" if ok else "fail"
        if not ok:
            reasons.append(reason)

    check("no_nan", cand["nan_count"] == 0 and math.isfinite(cand["nll"]),
          f"predictions contain {cand['nan_count']:.0f} NaN/inf values" if cand["nan_count"]
          else "predictive NLL is not finite")
    if champ is None:
        checks["nll_vs_champion"] = "skipped: no champion (first model)"
    else:
        worse = cand["nll"] - champ["nll"]
        check("nll_vs_champion", worse <= gate.nll_tolerance,
              f"predictive NLL {cand['nll']:.4f} is worse than champion version {champion_version}'s "
              f"{champ['nll']:.4f} by {worse:.4f} nats/datum (nll_tolerance {gate.nll_tolerance})")
    if gate.max_nll is None:
        checks["max_nll"] = "skipped: no max_nll set"
    else:
        check("max_nll", cand["nll"] <= gate.max_nll,
              f"predictive NLL {cand['nll']:.4f} is above max_nll {gate.max_nll}")
    if "ece" in cand:
        check("ece", cand["ece"] <= gate.max_ece, f"ECE {cand['ece']:.4f} is above max_ece {gate.max_ece}")
    else:
        checks["ece"] = "skipped: not a classifier"
    if "coverage_90" in cand:
        low, high = gate.coverage_90
        check("coverage_90", low <= cand["coverage_90"] <= high,
              f"coverage of the 90% predictive interval {cand['coverage_90']:.3f} is outside coverage_90 "
              f"[{low}, {high}]")
    else:
        checks["coverage_90"] = "skipped: not a regression model"
    if "psis_khat" not in cand:
        checks["psis_khat"] = "skipped: not defined for this model (no global latents)"
    elif gate.max_psis_khat is None:
        checks["psis_khat"] = "skipped: max_psis_khat is null"
    else:
        check("psis_khat", cand["psis_khat"] <= gate.max_psis_khat,
              f"PSIS k-hat {cand['psis_khat']:.3f} is above max_psis_khat {gate.max_psis_khat} "
              f"(the variational posterior is unreliable)")
    checks["sd_ratio_to_laplace"], reason = sd_ratio_check(cand, gate)
    if reason:
        reasons.append(reason)
    check("latency", cand["latency_p95_ms"] <= gate.max_latency_p95_ms,
          f"p95 latency of single-row predict {cand['latency_p95_ms']:.1f} ms is above max_latency_p95_ms "
          f"{gate.max_latency_p95_ms}")
    return checks, reasons


def sd_ratio_check(cand: dict, gate: GateConfig) -> tuple[str, str | None]:
    """``(status, reason)`` of the posterior SDs against the Laplace approximation's, where the fit logged a trusted
    one: status ``pass``, ``fail`` (with the reason) or ``skipped: ...``."""
    if "sd_ratio_to_laplace_min" not in cand:
        return "skipped: no Laplace reference (not a linear/logistic regression)", None
    if not cand.get("laplace_trusted"):
        return "skipped: the Laplace approximation is not trusted here (too few rows per latent)", None
    if gate.sd_ratio_to_laplace is None:
        return "skipped: sd_ratio_to_laplace is null", None
    low, high = gate.sd_ratio_to_laplace
    ratios = cand["sd_ratio_to_laplace_min"], cand["sd_ratio_to_laplace_max"]
    if low <= ratios[0] and ratios[1] <= high:
        return "pass", None
    return "fail", (f"posterior SDs are {ratios[0]:.3f}-{ratios[1]:.3f} times the Laplace approximation's, outside "
                    f"sd_ratio_to_laplace [{low}, {high}] (the variational posterior is too "
                    f"{'narrow' if ratios[0] < low else 'wide'}; PSIS k-hat does not see a too-wide one)")
