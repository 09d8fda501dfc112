"""Training throughput: viops (Lightning + full MLflow telemetry) vs a hand-written PyTorch loop, same model code.

Both train the same Bayesian linear regression (20 features, 65,536 rows, fixed noise) with the same mean-field
family, ELBO estimator (``models.objectives.elbo``), particles, Adam settings and step-size schedule; the hand-written
loop shuffles the rows once per epoch and slices minibatches from the shuffled copy (viops' loader gathers each group
of ``train.steps_per_batch`` minibatches in one pass the same way, so the ratio measures viops' own overhead, not a
different data path) and logs nothing. viops' time is ``trainer.fit`` (validation each epoch, per-step
telemetry to MLflow on SQLite, NaN guard, checkpoint, averaging) plus waiting until every step's metrics are
delivered; setup and artifact logging are not counted. A third column runs viops with per-step metrics off
(``train.log_step_metrics: false``) to show what the telemetry itself costs. Medians of ``--rounds`` interleaved runs.

    python benchmarks/bench_blr_training.py [--rows 65536] [--batch-sizes 256 4096] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.objectives import elbo  # noqa: E402
from pipelines.build import build_family, build_model  # noqa: E402
from pipelines.config.loading import load_config  # noqa: E402
from pipelines.lifecycle.train import train  # noqa: E402
from pipelines.training.data import prepare  # noqa: E402

CONFIG = """\
name: bench-blr
data: {{path: data.csv, target: y}}
model:
  prior: {{weights: {{normal: {{scale: 1.0}}}}, intercept: {{normal: {{scale: 1.0}}}}}}
  noise: {{fixed: 0.5}}
train: {{batch_size: {batch}, max_epochs: {epochs}, lr: 0.01, early_stopping: {{enabled: false}}, progress_bar: false,
        log_step_metrics: {telemetry}}}
registry: {{auto_register: false}}
"""


def hand_written(config, data, steps: int) -> float:
    """The same SVI as viops in a bare loop; returns steps per second."""
    s = config.train
    torch.manual_seed(s.seed)
    x = torch.from_numpy(data.train[list(data.features)].to_numpy(np.float32))
    y = torch.from_numpy(data.train[data.target].to_numpy(np.float32))
    n = x.shape[0]
    model = build_model(config.model, x.shape[1])
    family = build_family(config.guide, model.latent_dim)
    opt = torch.optim.Adam(family.parameters(), lr=s.lr, betas=tuple(s.betas))
    floor = s.schedule.final_lr_ratio
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(t, steps) / steps))
    )
    done = 0
    start = time.perf_counter()
    while done < steps:
        perm = torch.randperm(n)
        xs, ys = x.index_select(0, perm), y.index_select(0, perm)  # shuffle once per epoch, then slice
        for lo in range(0, n, s.batch_size):
            terms = elbo(model, family, xs[lo : lo + s.batch_size], ys[lo : lo + s.batch_size], dataset_size=n,
                         num_particles=s.num_particles, antithetic=s.antithetic)
            loss = -terms.elbo / n
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            done += 1
            if done >= steps:
                break
    return steps / (time.perf_counter() - start)


def viops(config, data, tracking_uri: str) -> tuple[float, int]:
    result = train(config, prepared=data, tracking_uri=tracking_uri, register=False)
    return result.metrics["steps"] / result.metrics["train_seconds"], int(result.metrics["steps"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=65_536)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 4096])
    parser.add_argument("--steps", type=int, default=6000, help="approximate optimisation steps per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions; medians are reported")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))

    work = Path(tempfile.mkdtemp(prefix="viops-bench-"))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.rows, args.features))
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(args.features)])
    frame["y"] = x @ rng.normal(size=args.features) + 0.5 * rng.normal(size=args.rows)
    frame.to_csv(work / "data.csv", index=False)
    uri = f"sqlite:///{work / 'mlflow.db'}"
    from mlflow import MlflowClient

    # Artifacts (checkpoints, pyfunc models) go to the scratch folder, not to ./mlruns of the current directory.
    MlflowClient(tracking_uri=uri).create_experiment("bench-blr", artifact_location=(work / "artifacts").as_uri())

    results = []
    for batch in args.batch_sizes:
        train_rows = int(args.rows * 0.7)
        steps_per_epoch = math.ceil(train_rows / batch)
        epochs = max(2, round(args.steps / steps_per_epoch))
        configs = {}
        for telemetry in ("true", "false"):
            (work / f"bench-{telemetry}.yaml").write_text(CONFIG.format(batch=batch, epochs=epochs, telemetry=telemetry))
            configs[telemetry] = load_config(work / f"bench-{telemetry}.yaml")
        config = configs["true"]
        data = prepare(config.data)
        viops(config, data, uri)  # warm-up: imports, DB schema, allocator
        hand_written(config, data, 200)
        full, bare, hand = [], [], []
        for _ in range(args.rounds):  # interleaved, so drift in machine load hits all three alike
            rate, steps = viops(config, data, uri)
            full.append(rate)
            bare.append(viops(configs["false"], data, uri)[0])
            hand.append(hand_written(config, data, steps))
        v_rate, b_rate, h_rate = (float(np.median(r)) for r in (full, bare, hand))
        results.append({"batch_size": batch, "steps": steps, "viops_steps_per_s": round(v_rate, 1),
                        "viops_no_step_metrics_steps_per_s": round(b_rate, 1),
                        "hand_written_steps_per_s": round(h_rate, 1), "ratio": round(v_rate / h_rate, 3),
                        "ratio_no_step_metrics": round(b_rate / h_rate, 3)})

    print(f"{'batch':>6} {'steps':>6} {'viops steps/s':>14} {'(no step metrics)':>18} {'hand-written':>13} "
          f"{'ratio':>6} {'(no step metrics)':>18}")
    for r in results:
        print(f"{r['batch_size']:>6} {r['steps']:>6} {r['viops_steps_per_s']:>14.1f} "
              f"{r['viops_no_step_metrics_steps_per_s']:>18.1f} {r['hand_written_steps_per_s']:>13.1f} "
              f"{r['ratio']:>6.2f} {r['ratio_no_step_metrics']:>18.2f}")
    if args.json:
        print(json.dumps({"rows": args.rows, "features": args.features, "results": results}))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
