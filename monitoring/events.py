"""What the lifecycle commands push besides the monitor's windows, for the dashboards: each training's summary (job
``viops_training``), each gate verdict (``viops_gate``) and each alias change (``viops_registry``).

A push replaces the model's previous series of the same job, so Prometheus' history of them is one point per
training, verdict or change: the ELBO, gradient norm and KL of successive retrains (debug view), the ELBO delta of
the latest retrain and its gate (on-call view), and promotions and rollbacks as annotations (their timestamp is the
value). Nothing is pushed without a Pushgateway; a failed push never fails the command (its result says so).
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Gauge

from monitoring.metrics import ExportResult, export_metrics

__all__ = ["export_training", "export_gate_verdict", "export_registry_change", "push_verdict", "push_change",
           "TRAINING_JOB", "GATE_JOB", "REGISTRY_JOB"]

TRAINING_JOB, GATE_JOB, REGISTRY_JOB = "viops_training", "viops_gate", "viops_registry"

#: gauge -> (MLflow metric of the training run, help)
TRAINING_GAUGES = {
    "viops_training_validation_elbo_per_datum_nats": ("final/validation_elbo_per_datum",
                                                      "Validation ELBO per datum at the end of the training, nats."),
    "viops_training_test_predictive_nll_nats": ("final/test_predictive_nll", "Held-out predictive NLL, nats."),
    "viops_training_grad_norm": ("grad_norm/total", "L2 norm of the ELBO's gradient at the last step."),
    "viops_training_kl_nats": ("kl", "KL(q || prior) at the last step, nats."),
    "viops_training_steps": ("final/steps", "SVI steps taken."),
    "viops_training_steps_per_second": ("final/steps_per_second", "Training throughput, steps per second."),
}


def _push(registry: CollectorRegistry, grouping: dict[str, str], pushgateway: str | None, job: str) -> ExportResult:
    if not pushgateway:
        return ExportResult(False, None, 0, "no Pushgateway configured (set VIOPS_PUSHGATEWAY)")
    return export_metrics(registry, grouping_key=grouping, pushgateway=pushgateway, job=job, retries=2)


def export_training(model: str, run_id: str, metrics: dict[str, float], pushgateway: str | None,
                    *, finished_at: float | None = None) -> ExportResult:
    """One training's summary, from its run's latest MLflow metrics (labels model and ``run``, the run id's first 8
    characters: a version is registered later, by another step)."""
    registry = CollectorRegistry()
    labels = {"model": model, "run": run_id[:8]}
    for name, (key, help_text) in TRAINING_GAUGES.items():
        if metrics.get(key) is not None:
            Gauge(name, help_text, tuple(labels), registry=registry).labels(**labels).set(float(metrics[key]))
    Gauge("viops_training_completed_timestamp_seconds", "When the training finished (Unix time).", tuple(labels),
          registry=registry).labels(**labels).set(finished_at or time.time())
    return _push(registry, {"model": model}, pushgateway, TRAINING_JOB)


def export_gate_verdict(model: str, candidate: str, champion: str | None, passed: bool, nll_delta: float | None,
                        pushgateway: str | None) -> ExportResult:
    """The gate's verdict on a candidate: passed (1/0) and its predictive NLL minus the champion's."""
    registry = CollectorRegistry()
    labels = {"model": model, "candidate": str(candidate), "champion": str(champion or "none")}
    Gauge("viops_gate_passed", "1 when the candidate passed the gate, 0 when rejected.", tuple(labels),
          registry=registry).labels(**labels).set(1.0 if passed else 0.0)
    if nll_delta is not None:
        Gauge("viops_gate_nll_delta_nats", "Candidate minus champion predictive NLL on the held-out rows (< 0: "
              "better).", tuple(labels), registry=registry).labels(**labels).set(nll_delta)
    Gauge("viops_gate_verdict_timestamp_seconds", "When the verdict was given (Unix time).", tuple(labels),
          registry=registry).labels(**labels).set(time.time())
    return _push(registry, {"model": model}, pushgateway, GATE_JOB)


def export_registry_change(model: str, action: str, version: str, previous: str | None,
                           pushgateway: str | None) -> ExportResult:
    """A champion change (``action`` promote or rollback): its time, for the dashboards' annotations."""
    registry = CollectorRegistry()
    labels = {"model": model, "action": action, "version": str(version), "previous": str(previous or "none")}
    Gauge("viops_registry_change_timestamp_seconds", "When the champion alias last moved by this action (Unix "
          "time).", tuple(labels), registry=registry).labels(**labels).set(time.time())
    return _push(registry, {"model": model, "action": action}, pushgateway, REGISTRY_JOB)


def push_verdict(verdict: dict, pushgateway: str | None) -> bool:
    """:func:`export_gate_verdict` of a verdict as ``Verdict.to_json()`` gives it (``viops evaluate``, the retrain's
    gate step); whether it was pushed. A verdict that evaluated nothing (the version was champion already) is not."""
    if verdict.get("already_champion"):
        return False
    metrics = verdict.get("metrics") or {}
    cand, champ = metrics.get("candidate") or {}, metrics.get("champion") or {}
    delta = cand["nll"] - champ["nll"] if cand.get("nll") is not None and champ.get("nll") is not None else None
    return export_gate_verdict(verdict["model"], verdict["candidate_version"], verdict["champion_version"],
                               verdict["passed"], delta, pushgateway).pushed


def push_change(change: dict, pushgateway: str | None) -> bool:
    """A champion that moved (``AliasChange.to_json()``: a promotion or a rollback) as an annotation on the dashboards
    (:func:`export_registry_change`); whether it was pushed. Nothing is pushed for a request that changed nothing."""
    if not change.get("changed"):
        return False
    return export_registry_change(change["model_name"], change["action"], change["to_version"],
                                  change["from_version"], pushgateway).pushed
