"""Side-by-side comparison of the finished runs of one MLflow experiment (``viops compare``).

Runs on the same dataset share an experiment, log the same ``final/*`` metric names whatever the model or family, and
carry the tags ``viops.model_kind``, ``viops.guide_family``, ``viops.objective`` and ``viops.data_fingerprint``; this
lines them up and marks the best run per metric. Metrics a run did not log are shown as missing, never as zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["COMPARED_METRICS", "Comparison", "compare_experiment", "CompareError"]


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
         ("viops.data_fingerprint", "data"))


@dataclass(frozen=True)
class Comparison:
    """Finished runs of one experiment (newest first), their compared metrics, and the best run per metric."""

    experiment: str
    runs: list[dict]
    best: dict[str, str]

    def to_json(self) -> dict:
        return {"experiment": self.experiment, "runs": self.runs, "best": self.best}

    def table(self) -> str:
        metrics = [(key, label) for key, label, _ in COMPARED_METRICS if any(key in r["metrics"] for r in self.runs)]
        header = ["run", "model", "family", "objective", *(label for _, label in metrics)]
        rows = []
        for run in self.runs:
            cells = [run["run_name"] or run["run_id"][:12], run["model"], run["family"], run["objective"]]
            for key, _ in metrics:
                value = run["metrics"].get(key)
                mark = "*" if self.best.get(key) == run["run_id"] else ""
                cells.append("-" if value is None else f"{value:.4g}{mark}")
            rows.append(cells)
        widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
        lines = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)) for line in [header, *rows]]
        return "\n".join(lines) + "\n(* best per metric)"


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
    rows = []
    for run in runs:
        metrics = {key: run.data.metrics[key] for key, _, _ in COMPARED_METRICS if key in run.data.metrics}
        rows.append({
            "run_id": run.info.run_id,
            "run_name": run.info.run_name,
            **{label: run.data.tags.get(tag, "") for tag, label in _TAGS},
            "metrics": metrics,
        })
    best = {}
    for key, _, direction in COMPARED_METRICS:
        scored = [(r["metrics"][key], r["run_id"]) for r in rows
                  if key in r["metrics"] and math.isfinite(r["metrics"][key])]
        if scored:
            best[key] = (max if direction == "max" else min)(scored)[1]
    return Comparison(experiment, rows, best)
