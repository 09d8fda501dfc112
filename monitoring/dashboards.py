"""Grafana dashboards as code: the three views of the guide, generated with grafanalib from one table of panels.

- **executive**: the ELBO of every model's champion over time, calibration error over time, the SLO error budget
  left;
- **on-call**: p95/p99 scoring latency, NaN/inf inputs, calibration with promotions and rollbacks as annotations,
  the latest retrains (gate verdict, NLL delta), the alerts firing;
- **debug**: ELBO per window, gradient norm and KL of successive trainings, drift per feature, PIT and coverage.

Every query reads the series ``viops monitor`` pushes (:mod:`monitoring.metrics`), those the lifecycle commands
push (:mod:`monitoring.events`) and Prometheus' ``ALERTS``. ``viops dashboards --out DIR`` writes the JSON that
``monitoring/grafana/provisioning`` loads; a test runs every panel's query against a real Prometheus after a run
of the distributed profile, and :func:`snapshot` draws the same queries with matplotlib for people without Grafana.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

__all__ = ["Panel", "View", "VIEWS", "ANNOTATIONS", "render", "queries", "dump"]

MODEL = 'model=~"$model"'


@dataclass(frozen=True)
class Panel:
    """One panel: its queries, and the legend of each (one template for all, or one per query)."""

    title: str
    exprs: tuple[str, ...]
    legend: str | tuple[str, ...] = "{{model}} v{{version}}"
    unit: str = "short"
    kind: str = "timeseries"  # timeseries | stat | table
    description: str = ""

    def legend_of(self, index: int) -> str:
        return self.legend if isinstance(self.legend, str) else self.legend[index]


@dataclass(frozen=True)
class View:
    uid: str
    title: str
    description: str
    panels: tuple[Panel, ...]
    annotations: bool = False


#: name -> query whose value is the event's time (Unix seconds): promotions and rollbacks of the champion.
ANNOTATIONS = {
    "promotion": f'viops_registry_change_timestamp_seconds{{action="promote", {MODEL}}}',
    "rollback": f'viops_registry_change_timestamp_seconds{{action="rollback", {MODEL}}}',
}

VIEWS = (
    View("viops-executive", "viops · executive", "How every model's fit, calibration and SLO budgets are doing.", (
        Panel("ELBO per datum of the champion, by window", (f'viops_elbo_per_datum_nats{{alias="champion", {MODEL}}}',),
              unit="none", description="On the window's labelled rows; higher is better."),
        Panel("Calibration error", (f'abs(viops_calibration_coverage_90_ratio{{{MODEL}}} - 0.9) or '
                                    f'viops_calibration_ece_ratio{{{MODEL}}}',), unit="percentunit",
              description="|coverage of the 90% interval − 0.9| for regressions, ECE for classifiers."),
        Panel("SLO error budget left (lowest objective)", (f'viops:slo_error_budget_remaining:min{{{MODEL}}}',),
              legend="{{model}} ({{alias}})", unit="percentunit", kind="stat",
              description="Recording rule viops:slo_error_budget_remaining:min (monitoring/prometheus/alerts.yml)."),
        Panel("Objectives the last window breached", (f'viops:slo_breached_objectives:count{{{MODEL}}}',),
              legend="{{model}} ({{alias}})", unit="short",
              description="Recording rule viops:slo_breached_objectives:count; no series: nothing breached."),
    )),
    View("viops-on-call", "viops · on-call", "What the person on call looks at first.", (
        Panel("Scoring latency p95 / p99", (f'viops_scoring_latency_p95_seconds{{{MODEL}}}',
                                            f'viops_scoring_latency_p99_seconds{{{MODEL}}}'), unit="s",
              legend=("{{model}} v{{version}} p95", "{{model}} v{{version}} p99")),
        Panel("NaN/inf inputs per window", (f'viops_nonfinite_input_ratio{{{MODEL}}} * on (model, alias, version) '
                                            f'viops_window_rows{{{MODEL}}}',), unit="short"),
        Panel("Coverage of the 90% interval (promotions and rollbacks annotated)",
              (f'viops_calibration_coverage_90_ratio{{{MODEL}}}',), unit="percentunit"),
        Panel("Latest retrain: NLL delta against the champion (gate)", (f'viops_gate_nll_delta_nats{{{MODEL}}}',),
              legend="{{model}} v{{candidate}} vs v{{champion}}", unit="none",
              description="Candidate minus champion predictive NLL on held-out rows; < 0 is better."),
        Panel("Latest retrain: passed the gate", (f'viops_gate_passed{{{MODEL}}}',),
              legend="{{model}} v{{candidate}}", kind="stat"),
        Panel("Alerts firing (most instances at once in the range)",
              (f'sum by (alertname, severity, model) (ALERTS{{alertname=~"Viops.+", alertstate="firing", {MODEL}}})',),
              legend="{{alertname}} ({{severity}})", kind="table"),
    ), annotations=True),
    View("viops-debug", "viops · debug", "Training and drift details for the engineer who fixes the model.", (
        Panel("ELBO per datum by window, and its change from the held-out ELBO",
              (f'viops_elbo_per_datum_nats{{{MODEL}}}', f'viops_elbo_per_datum_delta_nats{{{MODEL}}}'), unit="none",
              legend=("{{model}} v{{version}} ELBO", "{{model}} v{{version}} change")),
        Panel("Training: gradient norm at the last step", (f'viops_training_grad_norm{{{MODEL}}}',), unit="none",
              legend="{{model}} run {{run}}"),
        Panel("Training: KL(q ‖ prior) at the last step", (f'viops_training_kl_nats{{{MODEL}}}',), unit="none",
              legend="{{model}} run {{run}}"),
        Panel("Drift per feature (1: drifted)", (f'viops_feature_drifted{{{MODEL}}}',), legend="{{feature}}"),
        Panel("PIT and coverage", (f'viops_calibration_pit_ks{{{MODEL}}}',
                                   f'viops_calibration_coverage_90_ratio{{{MODEL}}}',
                                   f'viops_calibration_coverage_50_ratio{{{MODEL}}}'), unit="none",
              legend=("{{model}} v{{version}} PIT K-S", "{{model}} v{{version}} coverage 90%",
                      "{{model}} v{{version}} coverage 50%")),
    ), annotations=True),
)


def queries(view: View, model: str = ".+") -> list[tuple[str, str]]:
    """``(panel or annotation, PromQL)`` of a view, with the ``$model`` variable set to ``model``."""
    items = [(p.title, e) for p in view.panels for e in p.exprs]
    if view.annotations:
        items += [(f"annotation: {name}", expr) for name, expr in ANNOTATIONS.items()]
    return [(title, expr.replace("$model", model)) for title, expr in items]


def render(view: View) -> dict:
    """The view as Grafana dashboard JSON (grafanalib), with ``datasource`` and ``model`` variables."""
    import grafanalib.core as g
    from grafanalib._gen import DashboardEncoder

    source = "${datasource}"
    panels = []
    for i, panel in enumerate(view.panels):
        targets = [g.Target(expr=e, legendFormat=panel.legend_of(j), refId=chr(65 + j), datasource=source)
                   for j, e in enumerate(panel.exprs)]
        pos = g.GridPos(h=8, w=12, x=12 * (i % 2), y=8 * (i // 2))
        common = {"title": panel.title, "description": panel.description, "dataSource": source, "targets": targets,
                  "gridPos": pos}
        if panel.kind == "stat":
            panels.append(g.Stat(**common, format=panel.unit, reduceCalc="lastNotNull"))
        elif panel.kind == "table":
            panels.append(g.Table(**common, transformations=[{"id": "reduce", "options": {"reducers": ["max"]}}]))
        else:
            panels.append(g.TimeSeries(**common, unit=panel.unit, drawStyle="line", showPoints="always"))
    # The value is the event's Unix time; Grafana reads a value used as the time in milliseconds.
    annotations = [{"name": name, "datasource": source, "enable": True, "expr": f"({expr}) * 1000",
                    "useValueForTime": True,
                    "iconColor": "green" if name == "promotion" else "red", "step": "60s",
                    "titleFormat": f"{name} of {{{{model}}}} v{{{{version}}}}", "tagKeys": "model,action,version"}
                   for name, expr in (ANNOTATIONS.items() if view.annotations else ())]
    dashboard = g.Dashboard(
        title=view.title, uid=view.uid, description=view.description, tags=["viops"], panels=panels,
        timezone="utc", refresh="1m", schemaVersion=39, time=g.Time("now-24h", "now"),
        annotations=g.Annotations(list=annotations),
        templating=g.Templating(list=[
            g.Template(name="datasource", query="prometheus", type="datasource", label="Prometheus"),
            g.Template(name="model", query="label_values(viops_window_rows, model)", dataSource=source,
                       label="model", includeAll=True, multi=True, allValue=".+", default="$__all"),
        ]),
    ).auto_panel_ids()
    return json.loads(json.dumps(dashboard.to_json_data(), cls=DashboardEncoder))


def dump(view: View) -> str:
    return json.dumps(render(view), indent=2, sort_keys=True) + "\n"
