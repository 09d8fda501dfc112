"""Out-of-core training: peak memory and throughput of ``viops train`` on 100k, 1M and 10M rows.

Writes synthetic regression tables (20 standard-normal features, row groups of 131,072 rows) once, then runs the
same config (BLR, mean-field, batch 4,096, one epoch) as a separate ``viops train`` process under ``/usr/bin/time
-v`` for each size, streamed (``data.streaming.enabled``) and, for the sizes in ``--in-memory``, loaded whole. It
prints each run's wall time, peak RSS and fit throughput (SVI steps per second of ``trainer.fit``), and the peak RSS
relative to the first (100k-row) streamed run.

Throughput is then compared on ``--throughput-rows`` rows over ``--throughput-epochs`` epochs (a one-epoch fit of
1M rows lasts about a second, too short to time): streamed and in memory, alternating, ``--rounds`` times each.

    python benchmarks/bench_out_of_core.py [--sizes 100000,1000000,10000000] [--in-memory 100000,1000000]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

FEATURES = 20
ROW_GROUP = 131_072
VIOPS = Path(sys.executable).with_name("viops")

CONFIG = """name: ooc-{rows}
data:
  path: {path}
  target: y
  standardize: true
  split: {{validation: 0.0, test: 0.15, seed: 0}}
  streaming: {{enabled: {streamed}}}
model:
  kind: bayesian_linear_regression
  noise: {{learned: {{half_normal: {{scale: 1.0}}}}}}
guide: {{family: mean_field, precondition: none}}
train: {{batch_size: {batch}, max_epochs: {epochs}, lr: 0.01, seed: 0}}
"""


def make_table(rows: int, path: Path) -> Path:
    """``y = x @ w + 0.5 * noise``, written a row group at a time (never whole in memory)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.exists():
        return path
    rng = np.random.default_rng(rows)
    weights = rng.normal(size=FEATURES)
    partial = path.with_suffix(".partial")
    writer = None
    for start in range(0, rows, ROW_GROUP):
        n = min(ROW_GROUP, rows - start)
        x = rng.normal(size=(n, FEATURES))
        table = pa.table({**{f"x{i}": x[:, i] for i in range(FEATURES)}, "y": x @ weights + 0.5 * rng.normal(size=n)})
        writer = writer or pq.ParquetWriter(partial, table.schema)
        writer.write_table(table, row_group_size=ROW_GROUP)
    writer.close()
    partial.rename(path)
    return path


def train(path: Path, rows: int, streamed: bool, work: Path, batch: int, epochs: int) -> dict:
    """One ``viops train`` process under ``/usr/bin/time -v``: wall seconds, peak RSS (MB), fit steps/s."""
    config = work / f"ooc-{rows}-{'stream' if streamed else 'memory'}.yaml"
    config.write_text(CONFIG.format(rows=rows, path=path, streamed=str(streamed).lower(), batch=batch, epochs=epochs))
    command = ["/usr/bin/time", "-v", str(VIOPS), "train", "--config", str(config), "--no-register", "--json",
               "--tracking-uri", f"sqlite:///{work / 'mlflow.db'}"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-4000:]}")
    metrics = json.loads(done.stdout.strip().splitlines()[-1])["metrics"]
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1)) / 1024
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", done.stderr).group(1)
    seconds = sum(float(part) * 60**i for i, part in enumerate(reversed(wall.split(":"))))
    return {"rows": rows, "mode": "streamed" if streamed else "in memory", "wall_s": seconds, "peak_rss_mb": rss,
            "steps": metrics["steps"], "steps_per_s": metrics["steps_per_second"],
            "test_nll": metrics["test_predictive_nll"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000,10000000")
    parser.add_argument("--in-memory", default="100000,1000000", help="sizes also trained in memory")
    parser.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "viops-bench-ooc")
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--throughput-rows", type=int, default=1_000_000)
    parser.add_argument("--throughput-epochs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not Path("/usr/bin/time").exists():
        raise SystemExit("needs GNU time (/usr/bin/time; Debian package 'time') for the peak RSS")
    args.data_dir.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    in_memory = {int(s) for s in args.in_memory.split(",") if s}
    results = []
    with tempfile.TemporaryDirectory(prefix="viops-bench-ooc-") as work:
        for rows in sizes:
            path = make_table(rows, args.data_dir / f"rows-{rows}.parquet")
            for streamed in (True, False) if rows in in_memory else (True,):
                results.append(train(path, rows, streamed, Path(work), args.batch, args.epochs))
                print(json.dumps(results[-1]), flush=True)
        path = make_table(args.throughput_rows, args.data_dir / f"rows-{args.throughput_rows}.parquet")
        speed = {True: [], False: []}
        for _ in range(args.rounds):
            for streamed in (True, False):
                run = train(path, args.throughput_rows, streamed, Path(work), args.batch, args.throughput_epochs)
                speed[streamed].append(run["steps_per_s"])
                print(json.dumps({**run, "throughput_round": True}), flush=True)
    base = next(r for r in results if r["mode"] == "streamed")
    print(f"\n{'rows':>11} {'mode':>10} {'wall s':>7} {'peak RSS MB':>12} {'x RSS of first':>15} {'steps/s':>8}")
    for r in results:
        print(f"{r['rows']:>11,} {r['mode']:>10} {r['wall_s']:>7.1f} {r['peak_rss_mb']:>12.0f} "
              f"{r['peak_rss_mb'] / base['peak_rss_mb']:>15.2f} {r['steps_per_s']:>8.0f}")
    streamed, in_memory = float(np.median(speed[True])), float(np.median(speed[False]))
    print(f"\nthroughput on {args.throughput_rows:,} rows, {args.throughput_epochs} epochs, batch {args.batch} "
          f"(median of {args.rounds}): streamed {streamed:.0f} steps/s, in memory {in_memory:.0f} steps/s, "
          f"ratio {streamed / in_memory:.2f}")


if __name__ == "__main__":
    main()
