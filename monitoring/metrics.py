"""Window results as Prometheus metrics (prometheus-client), pushed to a Pushgateway or written to a text file.

Names follow Prometheus conventions: a ``viops_`` prefix, base units in the suffix (``_seconds``, ``_ratio``), and
labels ``model``, ``alias``, ``version``. No window ids go in labels, so cardinality stays at one series per model
alias; the exceptions are ``viops_feature_drift_statistic`` and ``viops_feature_drifted``, labelled by ``feature``
too (bounded by the model's configured features), for the debug dashboard's drift per feature. Per SLO objective
``<name>`` (from ``configs/slo.yaml``) there are three series: ``viops_slo_<name>_good`` (1 or 0, absent without
data), ``viops_slo_<name>_burn_rate`` and ``viops_slo_<name>_error_budget_remaining_ratio``. The alert rules compute
multi-window burn rates from ``_good``.

Each export builds its own ``CollectorRegistry`` (never the process-global one). A failed push is logged and retried
with backoff. If it still fails, the metrics go to the text file instead and the result says so: the window's
verdict is never lost because Prometheus was unreachable.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path

from prometheus_client import CollectorRegistry, Enum, Gauge, delete_from_gateway, push_to_gateway, write_to_textfile

from monitoring.checks.indicators import indicator_value
from monitoring.checks.results import WindowReport

__all__ = ["JOB", "GAUGES", "DECISIONS", "build_registry", "export_metrics", "ExportResult", "INTEGRITY_JOB",
           "SIGNATURE_GAUGE", "export_signature_status",
           "retire_group"]

log = logging.getLogger(__name__)

JOB = "viops_monitor"
LABELS = ("model", "alias", "version")
#: Where a command that checked a version's signature pushes the outcome (grouped by model and version).
INTEGRITY_JOB = "viops_integrity"
SIGNATURE_GAUGE = "viops_model_signature_valid"
SIGNATURE_HELP = "1 when the version's model files matched its signature by the trusted key, 0 when refused."

#: metric name -> (indicator path in the window report's typed results, help text); a test resolves every path.
GAUGES = {
    "viops_feature_drift_share_ratio": ("drift.share", "Share of feature columns that drifted from the reference."),
    "viops_feature_drift_weighted_share_ratio": ("drift.weighted_share",
                                                 "Share of the champion's feature sensitivity in drifted columns."),
    "viops_feature_drift_weighted_distance": ("drift.weighted_distance",
                                              "Sensitivity-weighted mean drift distance of the features."),
    "viops_slow_drift_cusum": ("drift.cusum", "CUSUM of the weighted drift distance over the champion's windows."),
    "viops_predictive_sd_ratio": ("vi_health.uncertainty.mean_predictive_sd.ratio",
                                  "Mean predictive SD on the window over that on the reference (regression)."),
    "viops_window_volume_ratio": ("inputs.volume_ratio", "Rows in the window over the usual rows per window."),
    "viops_prediction_drift_share_ratio": ("drift.predictions.share",
                                           "Share of prediction columns that drifted from the reference."),
    "viops_calibration_coverage_90_ratio": ("calibration.coverage_90",
                                            "Share of labelled rows inside the 90% predictive interval."),
    "viops_calibration_coverage_90_delta_ratio": ("calibration.delta.coverage_90",
                                                  "90% coverage minus the champion's held-out baseline."),
    "viops_calibration_ece_ratio": ("calibration.ece", "Expected calibration error on labelled rows (classifiers)."),
    "viops_calibration_brier": ("calibration.brier", "Brier score on labelled rows (classifiers)."),
    "viops_elbo_per_datum_delta_nats": ("vi_health.elbo_per_datum_delta",
                                        "ELBO per datum on the window minus the held-out baseline, in nats."),
    "viops_predictive_nll_nats": ("vi_health.nll", "Predictive negative log-likelihood per datum, in nats."),
    "viops_elbo_per_datum_nats": ("vi_health.elbo_per_datum", "ELBO per datum on the window's labelled rows, nats."),
    "viops_calibration_coverage_50_ratio": ("calibration.coverage_50",
                                            "Share of labels inside the 50% predictive interval."),
    "viops_calibration_pit_ks": ("calibration.pit_ks", "K-S distance of the PIT values from uniform (0: calibrated)."),
    "viops_nonfinite_input_ratio": ("inputs.nonfinite_fraction", "Share of rows with a NaN or infinite feature."),
    "viops_amortization_gap_nats": ("vi_health.amortization_gap", "Amortization gap on a window subsample, nats."),
    "viops_active_units_ratio": ("vi_health.active_unit_ratio",
                                 "Share of latent dimensions the encoder uses on the window (amortized models)."),
    "viops_window_rows": ("inputs.rows", "Rows in the window."),
    "viops_champion_promoted_timestamp_seconds": ("champion.promoted_at_seconds",
                                                  "When the scored version became champion (Unix time)."),
}


#: What the decision can be, strongest last; exported as the state set ``viops_decision{viops_decision="..."}``.
DECISIONS = ("none", "ticket", "page", "retrain", "rollback")


def build_registry(report: WindowReport, slo_statuses, *, model: str, alias: str, version: str,
                   window_start: float | None = None, decision: str | None = None,
                   signature_verified: bool = False) -> CollectorRegistry:
    """A fresh registry holding this window's gauges (indicators absent from the report are not exported), when
    given the window's decision (a ticket is an incident Prometheus can see, not only a file), and
    :data:`SIGNATURE_GAUGE` 1 when the champion's signature was verified on loading."""
    registry = CollectorRegistry()
    labels = {"model": model, "alias": alias, "version": str(version)}

    def gauge(name: str, help_text: str, value: float | None) -> None:
        if value is None:
            return
        Gauge(name, help_text, LABELS, registry=registry).labels(**labels).set(value)

    for name, (path, help_text) in GAUGES.items():
        gauge(name, help_text, indicator_value(report, path))
    latency_ms = indicator_value(report, "vi_health.latency_p95_ms")
    gauge("viops_scoring_latency_p95_seconds", "p95 of single-row predict latency, seconds.",
          None if latency_ms is None else latency_ms / 1000.0)
    latency_ms = indicator_value(report, "vi_health.latency_p99_ms")
    gauge("viops_scoring_latency_p99_seconds", "p99 of single-row predict latency, seconds.",
          None if latency_ms is None else latency_ms / 1000.0)
    if report.drift is not None and report.drift.columns:
        statistic = Gauge("viops_feature_drift_statistic", "Evidently's drift statistic of each feature on the window: "
                          "a p-value (kind p_value: small = drift) or a distance (kind distance: large = drift).",
                          (*LABELS, "feature", "method", "kind"), registry=registry)
        drifted = Gauge("viops_feature_drifted", "1 when the feature drifted from the reference on the window.",
                        (*LABELS, "feature"), registry=registry)
        for name, column in report.drift.columns.items():
            statistic.labels(**labels, feature=name, method=column.method, kind=column.kind).set(column.value)
            drifted.labels(**labels, feature=name).set(1.0 if column.drifted else 0.0)
    gauge("viops_window_start_timestamp_seconds", "Start of the window these values describe (Unix time).",
          window_start)
    gauge(SIGNATURE_GAUGE, SIGNATURE_HELP, 1.0 if signature_verified else None)
    if decision is not None:
        Enum("viops_decision", "The monitor's decision on the last window.", LABELS, states=list(DECISIONS),
             registry=registry).labels(**labels).state(decision)
    for status in slo_statuses:
        prefix = f"viops_slo_{status.name}"
        gauge(f"{prefix}_good", f"1 when the last window met the {status.name} objective, 0 when not.",
              None if status.good is None else float(status.good))
        gauge(f"{prefix}_burn_rate", f"Error-budget burn rate of {status.name} over its SLO period.",
              status.burn_rate)
        gauge(f"{prefix}_error_budget_remaining_ratio", f"Error budget of {status.name} left in its SLO period.",
              status.budget_remaining)
    return registry


@dataclass(frozen=True)
class ExportResult:
    pushed: bool
    textfile: str | None
    attempts: int
    error: str | None = None

    def to_json(self) -> dict:
        return {"pushed": self.pushed, "textfile": self.textfile, "attempts": self.attempts, "error": self.error}


def export_metrics(registry: CollectorRegistry, *, grouping_key: dict[str, str], pushgateway: str | None = None,
                   textfile: str | Path | None = None, retries: int = 3, backoff_seconds: float = 0.5,
                   timeout: float = 5.0, job: str = JOB) -> ExportResult:
    """Push to ``pushgateway`` (as ``job``, grouped by ``grouping_key``: the monitor's model and alias) when given,
    retrying with exponential backoff; write ``textfile`` when there is no gateway or every push failed."""
    error = None
    attempts = 0
    if pushgateway:
        for attempts in range(1, retries + 1):
            try:
                push_to_gateway(pushgateway, job=job, registry=registry, grouping_key=grouping_key, timeout=timeout)
                return ExportResult(True, None, attempts)
            except (OSError, HTTPException, ValueError) as exc:  # URLError, refused, timeouts, non-HTTP replies
                error = f"{type(exc).__name__}: {exc}"
                log.warning("push to %s failed (attempt %d of %d): %s", pushgateway, attempts, retries, error)
                if attempts < retries:
                    time.sleep(backoff_seconds * 2 ** (attempts - 1))
    if textfile is None:
        return ExportResult(False, None, attempts, error or "no pushgateway and no textfile configured")
    path = Path(textfile)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), registry)  # atomic: a temporary file renamed into place
    return ExportResult(False, str(path), attempts, error)


def export_signature_status(model: str, version: str, valid: bool, pushgateway: str | None) -> ExportResult:
    """Push :data:`SIGNATURE_GAUGE` for one version (job :data:`INTEGRITY_JOB`). A 0 pages
    (``ViopsModelSignatureInvalid``); ``viops verify`` pushing 1 for the same version resolves it."""
    if not pushgateway:
        return ExportResult(False, None, 0, "no Pushgateway configured (set VIOPS_PUSHGATEWAY)")
    registry = CollectorRegistry()
    Gauge(SIGNATURE_GAUGE, SIGNATURE_HELP, ("model", "version"), registry=registry).labels(
        model=model, version=str(version)).set(1.0 if valid else 0.0)
    return export_metrics(registry, grouping_key={"model": model, "version": str(version)}, pushgateway=pushgateway,
                          job=INTEGRITY_JOB)


def retire_group(model: str, alias: str, pushgateway: str | None, timeout: float = 5.0) -> bool:
    """Delete the monitor's series of ``model``/``alias`` from the Pushgateway (a challenger that left the shadow):
    the gateway would otherwise serve its last values for ever. False when there is no gateway or it failed."""
    if not pushgateway:
        return False
    try:
        delete_from_gateway(pushgateway, job=JOB, grouping_key={"model": model, "alias": alias}, timeout=timeout)
        return True
    except (OSError, HTTPException, ValueError) as exc:
        log.warning("could not delete %s@%s's series from %s: %s", model, alias, pushgateway, exc)
        return False
