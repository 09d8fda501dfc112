"""The Prometheus alert rules, rendered from ``configs/slo.yaml`` into ``monitoring/prometheus/alerts.yml``.

Three kinds of alert:

Every alert watches the serving version (``alias="champion"``); a challenger in shadow pushes the same series with
``alias="challenger"``, and the shadow policy, not an alert, judges them.

- **Threshold alerts**: the last window broke an objective (``viops_slo_<objective>_good == 0``).
  ``ViopsCalibrationRegressionAfterDeploy`` fires only while the champion is less than 6 hours old.
- **Multi-window, multi-burn-rate alerts** on every objective (Google SRE workbook, ch. 5):
  - page at 14.4× over 1h and 5m, or at 6× over 6h and 30m;
  - ticket at 1× over 3d and 6h.
  
  The error ratio over a range is ``1 - avg_over_time(viops_slo_<objective>_good[range])``; the burn rate divides
  it by the objective's budget ``1 - target``.
- **Staleness**: the monitor has not pushed for 2 hours (``push_time_seconds``, set by the Pushgateway).
- **Recording rules** (``viops:...``): the lowest error budget left and the count of breached objectives, per model
  and alias.
- **Integrity**: a command refused a version whose files fail their signature check
  (``viops_model_signature_valid == 0``, pushed by the refusing command; :mod:`pipelines.registry.signing`).
- **Deployment**: a canary breached a calibration or latency objective on the rows it answered
  (``viops_canary_slo_good == 0``, alias ``challenger``; docs/deployment.md).

Every alert carries a ``runbook`` annotation naming ``runbooks/<AlertName>.md``; tests check that each alert has one
and each runbook names an alert. After editing the SLOs, regenerate the file::

    viops alerts --slo configs/slo.yaml --out monitoring/prometheus/alerts.yml
"""

from __future__ import annotations

import yaml

from monitoring.slo import SLOConfig

__all__ = ["THRESHOLD_ALERTS", "BURN_RATE_TIERS", "render_rules", "alert_names", "RUNBOOK_URL"]

RUNBOOK_URL = "runbooks/{alert}.md"
RECENT_DEPLOY_SECONDS = 6 * 3600

#: alert -> (objectives whose last window breached it, severity, summary)
THRESHOLD_ALERTS = {
    "ViopsDataDrift": (["feature_drift"], "ticket",
                       "Features that {{ $labels.model }} relies on drifted from the reference"),
    "ViopsSlowDrift": (["slow_drift"], "ticket",
                       "Evidence of slow drift of {{ $labels.model }}'s inputs accumulated over windows"),
    "ViopsPredictionDrift": (["prediction_drift"], "ticket",
                             "Predictions of {{ $labels.model }} moved away from those on the reference"),
    "ViopsUncertaintyShift": (["predictive_sd_shift"], "ticket",
                              "The predictive uncertainty of {{ $labels.model }} changed on production data"),
    "ViopsCalibrationBreach": (["coverage_90", "ece", "coverage_regression"], "ticket",
                               "{{ $labels.model }} is mis-calibrated on labelled production data"),
    "ViopsCalibrationRegressionAfterDeploy": (["coverage_90", "ece", "coverage_regression"], "page",
                                              "Calibration of {{ $labels.model }} v{{ $labels.version }} broke "
                                              "within 6h of its promotion"),
    "ViopsElboRegression": (["elbo_regression"], "ticket",
                            "{{ $labels.model }} fits production data worse than its held-out data (ELBO)"),
    "ViopsNanInputs": (["input_validity"], "page", "NaN/inf inputs reach {{ $labels.model }}"),
    "ViopsInputSchema": (["input_schema"], "page", "Inputs of {{ $labels.model }} break its training schema"),
    "ViopsLowVolume": (["volume"], "ticket", "{{ $labels.model }} received far fewer rows than usual"),
    "ViopsFeedEmpty": (["feed_rows"], "ticket", "{{ $labels.model }} received an empty window"),
    "ViopsPosteriorCollapse": (["active_units"], "ticket",
                               "The encoder of {{ $labels.model }} uses too few latent dimensions"),
    "ViopsAmortizationGapBudget": (["amortization_gap"], "ticket",
                                   "The amortization gap of {{ $labels.model }} is over budget"),
    "ViopsScoringLatency": (["scoring_latency"], "ticket", "Scoring {{ $labels.model }} is slow"),
}

#: alert -> severity, [(long range, short range, burn-rate factor), ...] (any pair firing fires the alert)
BURN_RATE_TIERS = {
    "ViopsSLOBurnRatePage": ("page", [("1h", "5m", 14.4), ("6h", "30m", 6.0)]),
    "ViopsSLOBurnRateTicket": ("ticket", [("3d", "6h", 1.0)]),
}

#: The alerts watch the version that serves. A challenger in shadow exports the same series with
#: ``alias="challenger"``; its breaches are judged by the shadow policy (monitoring/shadow.py), and page nobody.
SERVING = '{alias="champion"}'
STALE_ALERT = "ViopsMetricsStale"
STALE_SECONDS = 2 * 3600
SIGNATURE_ALERT = "ViopsModelSignatureInvalid"
#: A live challenger's canary slice breached a calibration or latency objective (monitoring/challenger.py).
CANARY_ALERT = "ViopsCanaryBreach"


#: The start of the window an alert is about (Unix seconds), from the gauge the monitor pushed with the window's
#: results; ``viops alert-receiver`` re-monitors that window. Empty when the model pushed no window start.
#: A threshold alert carries it as a label, so each window that breaches is its own alert (a new firing that
#: Alertmanager notifies, as the decision engine decides per window); a burn-rate alert, about the budget over
#: hours, carries it as an annotation.
WINDOW_START = ('{{ with printf "viops_window_start_timestamp_seconds{model=%q,alias=%q}" $labels.model '
                '$labels.alias | query }}{{ with first . }}{{ printf "%.0f" .Value }}{{ end }}{{ end }}')


def _annotations(alert: str, summary: str, description: str, *, window: bool = False) -> dict:
    about = {"window_start": WINDOW_START} if window else {}
    return {"summary": summary, "description": description, "runbook": RUNBOOK_URL.format(alert=alert), **about}


def _threshold_rule(alert: str, objectives: list[str], severity: str, summary: str) -> dict:
    expr = " or ".join(f"viops_slo_{o}_good{SERVING} == 0" for o in objectives)
    if alert == "ViopsCalibrationRegressionAfterDeploy":
        expr = (f"({expr}) and on (model, alias, version) "
                f"(time() - viops_champion_promoted_timestamp_seconds < {RECENT_DEPLOY_SECONDS})")
    return {
        "alert": alert, "expr": expr, "labels": {"severity": severity, "window_start": WINDOW_START},
        "annotations": _annotations(alert, summary, "The last monitored window breached "
                                    + " / ".join(objectives) + " ({{ $value }}); see configs/slo.yaml."),
    }


def _burn_rule(alert: str, severity: str, tiers: list, objective: str, target: float) -> dict:
    budget = round(1.0 - target, 10)

    def ratio(window: str) -> str:
        return f"(1 - avg_over_time(viops_slo_{objective}_good{SERVING}[{window}])) / {budget:g}"

    expr = " or ".join(f"({ratio(long)} > {factor:g} and {ratio(short)} > {factor:g})"
                       for long, short, factor in tiers)
    return {
        "alert": alert, "expr": expr, "labels": {"severity": severity, "objective": objective},
        "annotations": _annotations(alert, f"{objective} of {{{{ $labels.model }}}} burns its error budget",
                                    f"Burn rate above {' / '.join(f'{f:g}x' for *_, f in tiers)} of objective "
                                    f"{objective} (target {target:g}) over "
                                    + ", ".join(f"{long}/{short}" for long, short, _ in tiers) + ".", window=True),
    }


#: Recording rules: per model and alias, the lowest error budget left over all objectives and how many objectives the
#: last window breached (the executive dashboard reads them; cheap to query over long ranges).
RECORDING_RULES = [
    {"record": "viops:slo_error_budget_remaining:min",
     "expr": 'min by (model, alias) ({__name__=~"viops_slo_.+_error_budget_remaining_ratio"})'},
    {"record": "viops:slo_breached_objectives:count",
     "expr": 'count by (model, alias) ({__name__=~"viops_slo_.+_good"} == 0)'},
]


def render_rules(slos: SLOConfig) -> dict:
    """The rule file as a mapping (what ``alerts.yml`` holds)."""
    known = {o.name: o for o in slos.objectives}
    thresholds = [_threshold_rule(alert, [o for o in objectives if o in known], severity, summary)
                  for alert, (objectives, severity, summary) in THRESHOLD_ALERTS.items()
                  if any(o in known for o in objectives)]
    burn = [_burn_rule(alert, severity, tiers, o.name, o.target)
            for alert, (severity, tiers) in BURN_RATE_TIERS.items() for o in slos.objectives]
    stale = {
        "alert": STALE_ALERT,
        "expr": f'time() - push_time_seconds{{job="viops_monitor", alias="champion"}} > {STALE_SECONDS}',
        "labels": {"severity": "ticket"},
        "annotations": _annotations(STALE_ALERT, "No monitoring results for {{ $labels.model }} for 2h",
                                    "The monitor has not pushed metrics for this model and alias for over "
                                    f"{STALE_SECONDS // 3600} hours; every other alert is blind meanwhile."),
    }
    integrity = {
        "alert": SIGNATURE_ALERT, "expr": "viops_model_signature_valid == 0", "labels": {"severity": "page"},
        "annotations": _annotations(SIGNATURE_ALERT, "Version {{ $labels.version }} of {{ $labels.model }} fails "
                                    "its signature check",
                                    "A viops command refused the version: its model files are unsigned, signed by "
                                    "another key, or changed since they were signed. Nothing loaded it."),
    }
    canary = {
        "alert": CANARY_ALERT, "expr": "viops_canary_slo_good == 0", "labels": {"severity": "ticket"},
        "annotations": _annotations(CANARY_ALERT, "Canary v{{ $labels.version }} of {{ $labels.model }} breached "
                                    "{{ $labels.objective }} on the traffic it answered",
                                    "The canary broke a calibration or latency objective on the rows routed to it; "
                                    "the monitor rolls it back (the candidate is rejected, the champion keeps "
                                    "serving).", window=True),
    }
    return {"groups": [
        {"name": "viops-recording", "rules": RECORDING_RULES},
        {"name": "viops-thresholds", "rules": thresholds},
        {"name": "viops-burn-rates", "rules": burn},
        {"name": "viops-staleness", "rules": [stale]},
        {"name": "viops-integrity", "rules": [integrity]},
        {"name": "viops-deployment", "rules": [canary]},
    ]}


def alert_names(rules: dict) -> set[str]:
    return {rule["alert"] for group in rules["groups"] for rule in group["rules"] if "alert" in rule}


def dump(rules: dict) -> str:
    header = ("# Generated from configs/slo.yaml by `viops alerts`; edit the SLOs or monitoring/alerts.py,\n"
              "# not this file (a test checks they agree). One runbook per alert: runbooks/<alert>.md.\n")
    return header + yaml.safe_dump(rules, sort_keys=False, width=120)

