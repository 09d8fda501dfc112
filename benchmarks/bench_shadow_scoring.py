"""The cost of scoring with a challenger live: shadow (both versions score every row) and canary (rows routed), each
against single-version scoring in the same run.

Two full-rank Bayesian linear regressions with 20 features (the same data, two seeds) are registered in a temporary
SQLite MLflow store as champion and challenger. On 100,000 rows, interleaved over ``--rounds`` rounds:

- **single**: ``viops score``'s loop (``score_frame``: the champion's pyfunc, batches of 10,000 rows) and writing its
  predictions to Parquet, as the monitor stores them in the window;
- **shadow**: the same, plus the challenger scoring every row and its predictions written beside them
  (``Window.write_shadow``'s format): what a window costs while a challenger is in shadow;
- **canary**: the canary router (``CanaryRouter``) answering 10% of the rows with the challenger and the rest with the
  champion, in the same batches, and the predictions written.

The target (docs/deployment.md) is shadow <= 2.2x single.

    python benchmarks/bench_shadow_scoring.py [--rows 100000] [--rounds 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench_scoring import FEATURES, _train  # noqa: E402
from pipelines.serving.loading import load_version  # noqa: E402
from pipelines.serving.routing import CanaryRouter  # noqa: E402
from pipelines.serving.scoring import score_frame  # noqa: E402


def _write(predictions: pd.DataFrame, path: Path) -> None:
    predictions.astype("float64", errors="ignore").rename_axis("row").reset_index().to_parquet(path, index=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--fraction", type=float, default=0.1, help="the canary's share of rows")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow import MlflowClient

    from viops.cli import quiet_libraries

    quiet_libraries()
    root = Path(tempfile.mkdtemp(prefix="viops-bench-shadow-"))
    os.chdir(root)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    first, second = _train(root, uri), _train(root, uri, seed=1)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    champion = load_version(client, "bench-scoring", first, tracking_uri=uri)
    challenger = load_version(client, "bench-scoring", second, tracking_uri=uri)
    router = CanaryRouter.of({"champion": first, "candidate": second, "fraction": args.fraction},
                             champion.predictor, challenger.predictor)
    rng = np.random.default_rng(1)
    features = pd.DataFrame(rng.normal(size=(args.rows, FEATURES)), columns=[f"x{i}" for i in range(FEATURES)])

    def single() -> None:
        predictions, _ = score_frame(champion, features)
        _write(predictions, root / "champion.parquet")

    def shadow() -> None:
        single()
        predictions, _ = score_frame(challenger, features)
        _write(predictions, root / "challenger.parquet")

    def canary() -> None:
        predictions, _ = score_frame(champion, features, predict=lambda batch, params: router.predict(None, batch))
        _write(predictions.drop(columns="version"), root / "routed.parquet")

    cases = {"single": single, "shadow": shadow, "canary": canary}
    for run in cases.values():  # warm-up
        run()
    seconds = {name: [] for name in cases}
    cpu = {name: [] for name in cases}  # this process's CPU time: less moved by other load on the machine
    for _ in range(args.rounds):
        for name, run in cases.items():
            began, began_cpu = time.perf_counter(), time.process_time()
            run()
            seconds[name].append(time.perf_counter() - began)
            cpu[name].append(time.process_time() - began_cpu)
    median = {name: statistics.median(s) for name, s in seconds.items()}
    report = {
        "rows": args.rows, "rounds": args.rounds, "canary_fraction": args.fraction,
        "seconds": {name: [round(s, 3) for s in values] for name, values in seconds.items()},
        "rows_per_second": {name: round(args.rows / m) for name, m in median.items()},
        "ratio_to_single": {name: round(m / median["single"], 2) for name, m in median.items()},
        # each round's own ratio, then their median: the rounds ran back to back, so a slow spell of the machine
        # slows both sides of a round alike
        "paired_ratio_to_single": {name: round(statistics.median(a / b for a, b in zip(s, seconds["single"])), 2)
                                   for name, s in seconds.items()},
        "cpu_ratio_to_single": {name: round(statistics.median(c) / statistics.median(cpu["single"]), 2)
                                for name, c in cpu.items()},
        "shadow_target_met": median["shadow"] / median["single"] <= 2.2,
    }
    print(json.dumps(report, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
