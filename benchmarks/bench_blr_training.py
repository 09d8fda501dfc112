"""Training throughput of the Bayesian linear regression against the real limit: a minimal loop and Pyro.

Five implementations of the same SVI (20 features, 65,536 rows of which 70% train, fixed noise 0.5, N(0, 1) priors,
mean-field Gaussian q, 2 particles, the minibatch likelihood scaled by N/|B|, Adam, cosine step-size schedule, rows
shuffled once per epoch and sliced), interleaved round after round, for each batch size:

- **minimal**: ``benchmarks/baselines.py``, written from scratch (no framework, no ``torch.distributions``, closed-form
  KL): the practical limit, and the baseline of every ratio;
- **models**: a bare loop over the project's own ``models/`` code (``models.objectives.elbo``): what ``models/``
  costs over the minimal maths; these two loops run each round on one torch thread and on all, and count at the
  count whose median over the rounds is faster (``baselines.at_best_threads``), as viops' fit sets its own count;
- **viops**: ``viops train``'s ``trainer.fit`` with full telemetry (20 validations, per-step metrics to MLflow
  on SQLite, NaN guard, checkpoint, averaging), timed as ``final/train_seconds``: setup, the final metrics (the last
  batch of step metrics is delivered meanwhile) and artifact logging are not counted;
- **viops, no step metrics**: the same with ``train.log_step_metrics: false``;
- **pyro**: Pyro's ``SVI`` + ``Trace_ELBO(vectorize_particles=True)`` + ``AutoNormal`` as Pyro runs it by default
  (argument validation on); **pyro, no validation**: the same with validation off, Pyro's advice for speed (the
  ``bench`` extra; both columns are left out without it).

Medians of ``--rounds`` rounds, and under the table each column's lowest and highest ratio to the minimal loop in a
single round (how far the machine's speed wandered). The targets (issue: performance) are models >= 0.9x minimal,
viops >= 0.8x minimal and viops >= 5x pyro. viops' ratio to Pyro is given against both Pyro columns.

    python benchmarks/bench_blr_training.py [--rows 65536] [--batch-sizes 256 4096] [--rounds 3] [--json]
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # noqa: E402

from benchmarks.baselines import at_best_threads, at_each_thread_count, minimal_blr, paired_ratios, pyro_blr  # noqa: E402
from models.objectives import elbo  # noqa: E402
from pipelines.build import build_family, build_model  # noqa: E402
from pipelines.config.loading import load_config  # noqa: E402
from pipelines.lifecycle.train import train  # noqa: E402
from pipelines.training.data import prepare  # noqa: E402
from pipelines.training.evaluation import split_tensors  # noqa: E402

COLUMNS = ("minimal", "models", "viops", "viops_no_step_metrics", "pyro", "pyro_no_validation")

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


def over_models(config, data, steps: int) -> float:
    """The same SVI in a bare loop over ``models/`` code; returns steps per second."""
    s = config.train
    torch.manual_seed(s.seed)
    x, y = split_tensors(data.train, data.features, data.target, None)
    n = x.shape[0]
    model = build_model(config.model, x.shape[1])
    family = build_family(config.guide, model.latent_dim)
    opt = torch.optim.Adam(family.parameters(), lr=s.lr, betas=tuple(s.betas), fused=True)
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


def workspace(rows: int, features: int, prefix: str) -> tuple[Path, str]:
    """A scratch folder with the benchmark's table (``data.csv``: standard-normal features, y linear in them plus
    noise of scale 0.5) and a SQLite tracking store with the ``bench-blr`` experiment; returns it and the store's
    URI."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, features))
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(features)])
    frame["y"] = x @ rng.normal(size=features) + 0.5 * rng.normal(size=rows)
    frame.to_csv(work / "data.csv", index=False)
    uri = f"sqlite:///{work / 'mlflow.db'}"
    from mlflow import MlflowClient

    # Artifacts (checkpoints, pyfunc models) go to the scratch folder, not to ./mlruns of the current directory.
    MlflowClient(tracking_uri=uri).create_experiment("bench-blr", artifact_location=(work / "artifacts").as_uri())
    return work, uri


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=65_536)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 4096])
    parser.add_argument("--steps", type=int, default=6000, help="approximate optimisation steps per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions; medians are reported")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from viops.cli import quiet_libraries

    quiet_libraries()  # Lightning's and MLflow's start-up lines, as in `viops train`
    torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))

    work, uri = workspace(args.rows, args.features, "viops-bench-")

    results = []
    for batch in args.batch_sizes:
        train_rows = int(args.rows * 0.7)
        steps_per_epoch = math.ceil(train_rows / batch)
        epochs = max(2, round(args.steps / steps_per_epoch))
        configs = {}
        for telemetry in ("true", "false"):
            text = CONFIG.format(batch=batch, epochs=epochs, telemetry=telemetry)
            (work / f"bench-{telemetry}.yaml").write_text(text)
            configs[telemetry] = load_config(work / f"bench-{telemetry}.yaml")
        config = configs["true"]
        data = prepare(config.data)
        # Row-major, as viops trains on: a frame read from CSV holds its columns apart, and a tensor straight from its
        # to_numpy() is column-major, which slowed the minimal loop by a third at batch 4,096 (docs/benchmarks.md).
        x, y = split_tensors(data.train, data.features, data.target, None)
        s = config.train
        settings = {"batch_size": batch, "noise": 0.5, "prior_scale": 1.0, "lr": s.lr, "betas": tuple(s.betas),
                    "num_particles": s.num_particles, "seed": s.seed}

        def minimal(steps: int) -> float:
            return minimal_blr(x, y, steps=steps, final_lr_ratio=s.schedule.final_lr_ratio, **settings)

        def pyro(steps: int, validate: bool = True) -> float | None:
            return pyro_blr(x, y, steps=steps, validate=validate, **settings)

        viops(config, data, uri)  # warm-up: imports, DB schema, allocator
        over_models(config, data, 200), minimal(200), pyro(50), pyro(50, validate=False)
        rates: dict[str, list[float]] = {name: [] for name in COLUMNS}
        by_threads: dict[str, list[dict[int, float]]] = {"minimal": [], "models": []}
        for _ in range(args.rounds):  # interleaved, so drift in machine load hits every column alike
            rate, steps = viops(config, data, uri)
            rates["viops"].append(rate)
            rates["viops_no_step_metrics"].append(viops(configs["false"], data, uri)[0])
            # The two loops on one torch thread and on all, round by round (viops' fit sets its own count).
            by_threads["models"].append(at_each_thread_count(lambda: over_models(config, data, steps)))
            by_threads["minimal"].append(at_each_thread_count(lambda: minimal(steps)))
            rates["pyro"].append(pyro(steps))
            rates["pyro_no_validation"].append(pyro(steps, validate=False))
        threads = {}
        for name, rounds in by_threads.items():
            threads[name], rates[name] = at_best_threads(rounds)
        median = {name: float(np.median(r)) if None not in r else None for name, r in rates.items()}
        results.append({"batch_size": batch, "steps": steps, "threads": threads,
                        "steps_per_s": {name: None if m is None else round(m, 1) for name, m in median.items()},
                        "ratio_to_minimal": {name: None if m is None else round(m / median["minimal"], 3)
                                             for name, m in median.items()},
                        "round_ratio_range": {name: None if None in r else
                                              [round(v, 3) for v in paired_ratios(r, rates["minimal"])]
                                              for name, r in rates.items() if name != "minimal"},
                        **{f"viops_over_{name}": None if median[name] is None
                           else round(median["viops"] / median[name], 2) for name in ("pyro", "pyro_no_validation")}})

    print(f"{'batch':>6} {'steps':>6} " + " ".join(f"{name:>22}" for name in COLUMNS)
          + f" {'viops / pyro':>13} {'viops / pyro_no_validation':>27}")
    for r in results:
        cells = [f"{r['steps_per_s'][n]:>10.1f} ({r['ratio_to_minimal'][n]:.2f}x)" if r["steps_per_s"][n] else "-"
                 for n in COLUMNS]
        print(f"{r['batch_size']:>6} {r['steps']:>6} " + " ".join(f"{c:>22}" for c in cells)
              + f" {r['viops_over_pyro'] or '-':>13} {r['viops_over_pyro_no_validation'] or '-':>27}")
    print("steps/s (ratio of the medians to the minimal loop's); the lowest and highest ratio in a single round: "
          + "; ".join(f"batch {r['batch_size']}: " + ", ".join(f"{n} {span[0]:.2f}-{span[1]:.2f}" for n, span
                                                              in r["round_ratio_range"].items() if span)
                      for r in results))
    print("the minimal and models loops at the torch thread count faster over the rounds: "
          + "; ".join(f"batch {r['batch_size']}: minimal {r['threads']['minimal']}, models {r['threads']['models']}"
                      for r in results))
    if args.json:
        print(json.dumps({"rows": args.rows, "features": args.features, "rounds": args.rounds, "results": results}))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
