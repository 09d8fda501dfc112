"""``viops monitor`` on a 1,000,000-row × 20-feature window, against bare Evidently on the same data.

A Bayesian linear regression with 20 features is trained and registered in a temporary SQLite MLflow store, with a
reference snapshot of its training features. A window of 1,000,000 labelled rows, not yet scored, is written as
Parquet. Measured in the same process, in alternating rounds:

- **viops**: ``run_monitor`` end to end. It reads the window, loads the version, scores all 1M rows, runs drift
  (features and predictions), calibration and VI health, evaluates the SLOs, writes the metrics file and decides.
- **Evidently alone**: ``Report([DataDriftPreset()]).run(...)`` of the same 1M-row window's features against the
  same reference, with the data already in memory. This is what a team running Evidently by hand would run.

viops samples windows above ``row_cap`` (100,000) for its statistics. That design is where the difference comes
from, and the report shows it.

    python benchmarks/bench_monitor.py [--rows 1000000] [--rounds 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

FEATURES = 20


def _setup(root: Path, rows: int) -> tuple[str, Path, pd.DataFrame]:
    from pipelines.config.loading import load_config, parse_overrides
    from pipelines.lifecycle.train import train

    rng = np.random.default_rng(0)
    weights = rng.normal(size=FEATURES)
    x = rng.normal(size=(5000, FEATURES))
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(FEATURES)])
    frame["y"] = x @ weights + 0.5 + 0.3 * rng.normal(size=len(x))
    frame.to_csv(root / "train.csv", index=False)
    (root / "bench.yaml").write_text(
        "name: bench-monitor\ndata: {path: train.csv, target: y}\n"
        "model: {kind: bayesian_linear_regression, noise: {learned: {half_normal: {scale: 1.0}}}}\n"
        "guide: {family: full_rank}\ntrain: {batch_size: 256, max_epochs: 40, lr: 0.01}\n"
    )
    uri = f"sqlite:///{root / 'mlflow.db'}"
    train(load_config(root / "bench.yaml", parse_overrides([])), tracking_uri=uri)
    xw = rng.normal(size=(rows, FEATURES))
    window = pd.DataFrame(xw, columns=[f"x{i}" for i in range(FEATURES)])
    window["y"] = xw @ weights + 0.5 + 0.3 * rng.normal(size=rows)
    path = root / "window.parquet"
    window.to_parquet(path, index=False)
    return uri, path, window


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset
    from mlflow import MlflowClient

    from monitoring.checks.champion import load_champion
    from monitoring.checks.config import load_checks_config
    from monitoring.monitor import run_monitor
    from monitoring.runbooks import load_runbooks
    from monitoring.slo import load_slos
    from viops.cli import quiet_libraries

    quiet_libraries()
    root = Path(tempfile.mkdtemp(prefix="viops-bench-monitor-"))
    os.chdir(root)
    uri, window_path, window = _setup(root, args.rows)
    client = MlflowClient(uri, uri)
    alias = "challenger"  # the benchmark model need not pass the gate to be watched
    reference = load_champion(client, "bench-monitor", tracking_uri=uri, alias=alias).reference
    columns = [f"x{i}" for i in range(FEATURES)]
    checks = load_checks_config(REPO / "configs" / "monitoring.yaml")
    slos, runbooks = load_slos(REPO / "configs" / "slo.yaml"), load_runbooks(REPO / "runbooks")

    viops_seconds, evidently_seconds, result = [], [], None
    for round_ in range(args.rounds):
        began = time.perf_counter()
        result = run_monitor(client, model="bench-monitor", window_path=window_path, tracking_uri=uri, alias=alias,
                             window_id=f"round-{round_}", checks=checks, slos=slos, runbooks=runbooks,
                             state_dir=root / "state")
        viops_seconds.append(time.perf_counter() - began)

        began = time.perf_counter()
        definition = DataDefinition(numerical_columns=columns)
        Report([DataDriftPreset()]).run(Dataset.from_pandas(window[columns], data_definition=definition),
                                        Dataset.from_pandas(reference[columns], data_definition=definition))
        evidently_seconds.append(time.perf_counter() - began)

    viops_best, evidently_best = min(viops_seconds), min(evidently_seconds)
    report = {
        "rows": args.rows, "features": FEATURES, "reference_rows": len(reference), "rounds": args.rounds,
        "viops_monitor_seconds": [round(s, 2) for s in viops_seconds],
        "evidently_alone_seconds": [round(s, 2) for s in evidently_seconds],
        "ratio_best": round(viops_best / evidently_best, 3),
        "scored_rows": result["scoring"]["scored_now"],
        "drift_rows_compared": result["drift"]["rows"],
        "evidently_seconds_inside_viops": round(result["drift"]["seconds"], 2),
        "decision": result["decision"]["action"],
    }
    print(json.dumps(report) if args.json else json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
