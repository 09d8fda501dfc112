"""Side-by-side comparison of the finished runs of one MLflow experiment (``viops compare``).

Runs on the same dataset share an experiment, log the same ``final/*`` metric names whatever the model or family, and
carry the tags ``viops.model_kind``, ``viops.guide_family``, ``viops.objective``, ``viops.data_fingerprint`` and
(when trained with ``--set``) ``viops.overrides``; this lines them up with each run's id, start time and registered
version, and marks the best run per metric. Metrics a run did not log are shown as missing, never as zero.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, replace
from datetime import datetime, timezone

__all__ = ["COMPARED_METRICS", "Comparison", "compare_experiment", "CompareError", "metric_key"]


class CompareError(ValueError):
    """The experiment does not exist or has no finished runs; the message says which."""


#: (MLflow metric, column label, better direction). Later diagnostics join this list as they are logged.
COMPARED_METRICS: tuple[tuple[str, str, str], ...] = (
    ("final/validation_elbo_per_datum", "val ELBO/datum", "max"),
    ("final/validation_predictive_nll", "val NLL", "min"),
    ("final/test_predictive_nll", "test NLL", "min"),
    ("final/ece", "ECE", "min"),
    ("final/pit_ks", "PIT KS", "min"),
    ("final/psis_khat", "k-hat", "min"),
    ("final/amortization_gap", "amort. gap", "min"),
    ("final/active_units", "active units", "max"),
    ("final/approximation_gap", "approx. gap", "min"),
    ("final/train_seconds", "seconds", "min"),
)

_TAGS = (("viops.model_kind", "model"), ("viops.guide_family", "family"), ("viops.objective", "objective"),
         ("viops.data_fingerprint", "data"), ("viops.overrides", "overrides"))

#: The identifying columns of a row, in the order the table and the CSV show them.
_ID_COLUMNS = ("run_id", "run_name", "version", "started", "model", "family", "objective", "data", "overrides")


def metric_key(name: str) -> str:
    """The MLflow key of a compared metric named by its key (``final/test_predictive_nll``), its name without the
    ``final/`` prefix (``test_predictive_nll``) or its column label (``test NLL``).

    Raises:
        CompareError: no compared metric has that name (the message lists them).
    """
    for key, label, _ in COMPARED_METRICS:
        if name in (key, key.removeprefix("final/"), label):
            return key
    names = ", ".join(key.removeprefix("final/") for key, _, _ in COMPARED_METRICS)
    raise CompareError(f"no compared metric named {name!r} (metrics: {names})")


@dataclass(frozen=True)
class Comparison:
    """Finished runs of one experiment (newest first), their compared metrics, and the best run per metric."""

    experiment: str
    runs: list[dict]
    best: dict[str, str]
    #: The metric keys shown (every compared metric some run logged, unless narrowed by :meth:`select`).
    metrics: tuple[str, ...] = ()
    sorted_by: str | None = None

    def to_json(self) -> dict:
        return {"experiment": self.experiment, "runs": self.runs, "best": self.best, "metrics": list(self.metrics),
                "sorted_by": self.sorted_by}

    def select(self, metrics: list[str] | None = None, sort: str | None = None) -> Comparison:
        """Only ``metrics`` (names as :func:`metric_key` takes them) and/or the runs ordered best first by ``sort``
        (runs without that metric last, newest first among themselves)."""
        shown = tuple(dict.fromkeys(metric_key(m) for m in metrics)) if metrics else self.metrics
        runs = self.runs
        if sort:
            key = metric_key(sort)
            sign = -1.0 if _DIRECTION[key] == "max" else 1.0
            runs = sorted(runs, key=lambda r: (key not in r["metrics"] or not math.isfinite(r["metrics"][key]),
                                               sign * r["metrics"].get(key, 0.0)))
            if key not in shown:
                shown = (key, *shown)
        return replace(self, runs=runs, metrics=shown, sorted_by=metric_key(sort) if sort else self.sorted_by)

    def _rows(self, mark: bool) -> tuple[list[str], list[list[str]]]:
        labels = {key: label for key, label, _ in COMPARED_METRICS}
        header = [*_ID_COLUMNS, *(labels[key] if mark else key.removeprefix("final/") for key in self.metrics)]
        rows = []
        for run in self.runs:
            cells = [run["run_id"][:8] if mark else run["run_id"], *(run[c] or ("-" if mark else "")
                                                                     for c in _ID_COLUMNS[1:])]
            for key in self.metrics:
                value = run["metrics"].get(key)
                if value is None:
                    cells.append("-" if mark else "")
                elif mark:
                    cells.append(f"{value:.4g}" + ("*" if self.best.get(key) == run["run_id"] else ""))
                else:
                    cells.append(repr(value))
            rows.append(cells)
        return header, rows

    def table(self) -> str:
        header, rows = self._rows(mark=True)
        widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
        lines = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in [header, *rows]]
        order = f", sorted by {self.sorted_by.removeprefix('final/')}, best first" if self.sorted_by else ""
        return "\n".join(lines) + f"\n(* best per metric{order})"

    def csv(self) -> str:
        """One row per run, full run ids and unrounded metrics (empty where a run did not log one)."""
        header, rows = self._rows(mark=False)
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        return out.getvalue()


_DIRECTION = {key: direction for key, _, direction in COMPARED_METRICS}


def compare_experiment(client, experiment: str, max_runs: int = 100) -> Comparison:
    """Compare the finished runs of ``experiment`` (at most ``max_runs``, newest first)."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = sorted(e.name for e in client.search_experiments())
        raise CompareError(f"no MLflow experiment named {experiment!r} (experiments: {', '.join(names) or 'none'})")
    runs = client.search_runs([found.experiment_id], filter_string="attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=max_runs)
    if not runs:
        raise CompareError(f"experiment {experiment!r} has no finished runs")
    versions = _registered_versions(client, [run.info.run_id for run in runs])
    rows = []
    for run in runs:
        metrics = {key: run.data.metrics[key] for key, _, _ in COMPARED_METRICS if key in run.data.metrics}
        started = datetime.fromtimestamp(run.info.start_time / 1000, timezone.utc)
        rows.append({
            "run_id": run.info.run_id,
            "run_name": run.info.run_name,
            "version": versions.get(run.info.run_id, ""),
            "started": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
            **{label: run.data.tags.get(tag, "") for tag, label in _TAGS},
            "metrics": metrics,
        })
    best = {}
    for key, _, direction in COMPARED_METRICS:
        scored = [(r["metrics"][key], r["run_id"]) for r in rows
                  if key in r["metrics"] and math.isfinite(r["metrics"][key])]
        if scored:
            best[key] = (max if direction == "max" else min)(scored)[1]
    shown = tuple(key for key, _, _ in COMPARED_METRICS if any(key in r["metrics"] for r in rows))
    return Comparison(experiment, rows, best, shown)


def _registered_versions(client, run_ids: list[str]) -> dict[str, str]:
    """``run id -> "name/version"`` of the model versions registered from those runs (one registry search)."""
    if not run_ids:
        return {}
    quoted = ", ".join(f"'{run_id}'" for run_id in run_ids)
    found = client.search_model_versions(f"run_id IN ({quoted})")
    versions: dict[str, list[str]] = {}
    for v in sorted(found, key=lambda v: int(v.version)):
        versions.setdefault(v.run_id, []).append(f"{v.name}/{v.version}")
    return {run_id: " ".join(names) for run_id, names in versions.items()}
