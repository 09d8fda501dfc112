"""``viops monitor`` on 1M- and 10M-row windows: wall time and peak RSS of the whole command.

A Bayesian linear regression with 20 features (full rank, learned noise) is trained and registered in a temporary
SQLite MLflow store. Labelled windows of each size, not yet scored, are written to a window store a row group at a
time. Each is monitored by a separate ``viops monitor`` process under ``/usr/bin/time -v``: read, check, score
every row, write the scored window back, drift, calibration, VI health, SLOs, metrics file and decision. A window
above ``checks.max_rows_in_memory`` (1M) is read in chunks; a window of at most 1M rows is also run in chunks (with
that bound lowered) to show what chunking costs.

    python benchmarks/bench_monitor_scale.py [--sizes 1000000,10000000]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench_monitor import FEATURES, _setup  # noqa: E402

VIOPS = Path(sys.executable).with_name("viops")
CHUNK = 200_000


def write_window(path: Path, rows: int, weights: np.ndarray, seed: int) -> Path:
    """A labelled window from the training distribution, written ``CHUNK`` rows at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with pq.ParquetWriter(path, pa.schema([*((f"x{i}", pa.float64()) for i in range(FEATURES)),
                                           ("y", pa.float64())])) as writer:
        for start in range(0, rows, CHUNK):
            x = rng.normal(size=(min(CHUNK, rows - start), FEATURES))
            y = x @ weights + 0.5 + 0.3 * rng.normal(size=len(x))
            writer.write_table(pa.table({**{f"x{i}": x[:, i] for i in range(FEATURES)}, "y": y}))
    return path


def monitor(window: Path, uri: str, checks: Path | None) -> dict:
    command = ["/usr/bin/time", "-v", str(VIOPS), "monitor", "--model", "bench-monitor", "--window", str(window),
               "--json", "--no-drift-report", "--tracking-uri", uri, *(["--checks", str(checks)] if checks else [])]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-4000:]}")
    body = json.loads(done.stdout.strip().splitlines()[-1])
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1)) / 1024
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", done.stderr).group(1)
    return {"rows": body["inputs"]["rows"], "chunked": "chunks" in body["scoring"],
            "wall_s": sum(float(p) * 60**i for i, p in enumerate(reversed(wall.split(":")))), "peak_rss_mb": rss,
            "scored": body["scoring"]["scored_now"], "written_back": body["scoring"]["written_back"],
            "drift_rows": body["drift"]["rows"]["current"], "decision": body["decision"]["action"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000000,10000000")
    args = parser.parse_args()
    from viops.cli import quiet_libraries

    quiet_libraries()  # the set-up's training: Lightning's and MLflow's start-up lines, as in `viops train`
    results = []
    with tempfile.TemporaryDirectory(prefix="viops-bench-monitor-scale-") as work:
        root = Path(work)
        uri, _, _ = _setup(root, 10)  # the model (a 10-row throwaway window from the shared set-up)
        weights = np.random.default_rng(0).normal(size=FEATURES)  # the set-up's coefficients (same seed, first draw)
        chunked = root / "chunked.yaml"
        chunked.write_text("checks: {max_rows_in_memory: 100000}\n")
        start = datetime(2026, 1, 1, tzinfo=timezone.utc)
        for number, rows in enumerate(int(s) for s in args.sizes.split(",")):
            when = (start + timedelta(hours=number)).strftime("%Y-%m-%dT%H:%M:%SZ")
            path = write_window(root / "windows" / f"window={when}" / "data.parquet", rows, weights, seed=rows)
            runs = [None, chunked] if rows <= 1_000_000 else [None]
            for checks in runs:
                if checks is not None:  # score again: drop the predictions the first run wrote back
                    path = write_window(path, rows, weights, seed=rows)
                results.append(monitor(path, uri, checks))
                print(json.dumps(results[-1]), flush=True)
    print(f"\n{'rows':>11} {'chunked':>8} {'wall s':>7} {'peak RSS MB':>12} {'scored':>11} {'drift rows':>11}")
    for r in results:
        print(f"{r['rows']:>11,} {str(r['chunked']):>8} {r['wall_s']:>7.1f} {r['peak_rss_mb']:>12.0f} "
              f"{r['scored']:>11,} {r['drift_rows']:>11,}")


if __name__ == "__main__":
    main()
