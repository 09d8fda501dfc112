"""PNG snapshots of the dashboards for people without a Grafana server: each view's panels drawn with matplotlib
from the same PromQL (:mod:`monitoring.dashboards`), over a time range of a real Prometheus."""

from __future__ import annotations

import json
import re
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

from monitoring.dashboards import ANNOTATIONS, VIEWS, View

__all__ = ["query_range", "snapshot", "snapshot_all"]


def query_range(prometheus: str, expr: str, start: float, end: float, step: float) -> list[dict]:
    """``/api/v1/query_range``: the matrix result (``[{"metric": {...}, "values": [[t, "v"], ...]}]``)."""
    query = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{prometheus.rstrip('/')}/api/v1/query_range?{query}", timeout=30) as resp:
        body = json.loads(resp.read())
    if body.get("status") != "success":
        raise RuntimeError(f"Prometheus refused {expr!r}: {body}")
    return body["data"]["result"]


def _legend(template: str, labels: dict) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template)


def _with_gaps(points: list, step: float) -> tuple[list, list]:
    """Times and values of a series, with a break (NaN) where samples are missing, so no line spans the gap."""
    times, values, last = [], [], None
    for t, v in points:
        if last is not None and float(t) - last > 1.5 * step:
            times.append(datetime.fromtimestamp(last + step, tz=timezone.utc))
            values.append(float("nan"))
        times.append(datetime.fromtimestamp(float(t), tz=timezone.utc))
        values.append(float(v))
        last = float(t)
    return times, values


def snapshot(view: View, prometheus: str, start: float, end: float, out: Path, model: str = ".+") -> Path:
    """Draw ``view`` over ``[start, end]`` into ``out`` (PNG); returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    step = max(1.0, (end - start) / 300)
    events = []
    if view.annotations:
        for name, expr in ANNOTATIONS.items():
            for series in query_range(prometheus, expr.replace("$model", model), start, end, step):
                events += [(name, float(v)) for v in {value for _, value in series["values"]}]
    rows = (len(view.panels) + 1) // 2
    fig, axes = plt.subplots(rows, 2, figsize=(14, 3.6 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, view.panels):
        ax.set_title(panel.title, fontsize=10)
        series = [(s, panel.legend_of(j)) for j, expr in enumerate(panel.exprs)
                  for s in query_range(prometheus, expr.replace("$model", model), start, end, step)]
        if panel.kind == "timeseries":
            for s, legend in series:
                times, values = _with_gaps(s["values"], step)
                ax.plot(times, values, marker=".", label=_legend(legend, s["metric"]))
            for name, when in events:
                ax.axvline(datetime.fromtimestamp(when, tz=timezone.utc), color="green" if name == "promotion"
                           else "red", linestyle="--", linewidth=1)
            ax.tick_params(axis="x", labelrotation=20, labelsize=7)
        else:  # stat and table: the last (stat) or largest (table) value of each series
            labels = [_legend(legend, s["metric"]) for s, legend in series]
            values = [float(s["values"][-1][1]) if panel.kind == "stat" else max(float(v) for _, v in s["values"])
                      for s, _ in series]
            ax.barh(labels, values, color="tab:blue")
            for y, value in enumerate(values):
                ax.text(value, y, f" {value:.3g}", va="center", fontsize=8)
        if not series:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
        elif panel.kind == "timeseries":
            ax.legend(fontsize=7, loc="best")
    for ax in list(axes.flat)[len(view.panels):]:
        ax.set_visible(False)
    span = f"{datetime.fromtimestamp(start, tz=timezone.utc):%Y-%m-%d %H:%M} to " \
           f"{datetime.fromtimestamp(end, tz=timezone.utc):%H:%M} UTC"
    fig.suptitle(f"{view.title}  ({span}; dashed lines: promotions green, rollbacks red)" if view.annotations
                 else f"{view.title}  ({span})")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def snapshot_all(prometheus: str, start: float, end: float, out_dir: Path) -> list[Path]:
    """One PNG per view in ``out_dir``."""
    return [snapshot(view, prometheus, start, end, Path(out_dir) / f"{view.uid}.png") for view in VIEWS]
