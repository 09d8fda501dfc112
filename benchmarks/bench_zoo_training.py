"""Training throughput of the BNN and the VAE: viops (Lightning + full MLflow telemetry) vs a minimal loop and a bare
loop over ``models/``.

The minimal loops (``benchmarks/baselines.py``) are written from scratch, the same maths as viops'. The bare loop
uses the same model code from ``models/`` and the same objective (``models.objectives.elbo`` for the BNN
with local reparameterisation, ``models.amortized.amortized_bound`` for the VAE), batch size, particles and Adam
settings; the hand-written loop shuffles once per epoch, slices minibatches and logs nothing. viops' time is
``trainer.fit`` as reported in ``final/train_seconds``: validation, per-step telemetry to MLflow on SQLite, NaN guard,
checkpointing and (VAE) amortization-gap measurements included. "viops steps" is the same fit less the time of
its validation checks (``final/validation_seconds``) and gap measurements (``final/amortization_time_fraction``),
work the loops do not do: what the SVI steps cost inside the Lightning loop with its telemetry. Configs are
``configs/zoo/bnn_diabetes.yaml`` and ``configs/zoo/vae_digits.yaml`` with early stopping off. The two loops run
on one torch thread and on all, and count at the count faster over the rounds (viops' fit sets its own). Medians of
``--rounds`` interleaved runs, each round in a rotated order; under the table (and in the JSON) each ratio's lowest and
highest value in a single round.

    python benchmarks/bench_zoo_training.py [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.baselines import at_best_threads, at_each_thread_count, minimal_bnn, minimal_vae, paired_ratios  # noqa: E402
from models.amortized import amortized_bound  # noqa: E402
from models.objectives import elbo  # noqa: E402
from pipelines.build import build_family, build_model  # noqa: E402
from pipelines.config.loading import load_config, parse_overrides  # noqa: E402
from pipelines.lifecycle.train import train  # noqa: E402
from pipelines.training.data import prepare  # noqa: E402
from pipelines.training.evaluation import split_tensors, standardization  # noqa: E402
from pipelines.training.loaders import planned_steps  # noqa: E402

CASES = {"bnn": "bnn_diabetes.yaml", "vae": "vae_digits.yaml"}


def hand_written(config, data, steps: int) -> float:
    """The same SVI in a bare loop; returns steps per second."""
    s = config.train
    torch.manual_seed(s.seed)
    stats = standardization(data) if config.data.standardize else None
    x, y = split_tensors(data.train, data.features, data.target, stats)
    n = x.shape[0]
    model = build_model(config.model, x.shape[1])
    amortized = config.model.kind == "vae"
    if amortized:
        params = model.parameters()
    else:
        family = build_family(config.guide, model.latent_dim, init_loc=model.initial_loc())
        params = family.parameters()
    opt = torch.optim.Adam(params, lr=s.lr, betas=tuple(s.betas), fused=True)
    if amortized:  # each row's log C(n, x), computed once for the table as viops' fit does
        y = model.log_normaliser(x)
    done = 0
    start = time.perf_counter()
    while done < steps:
        perm = torch.randperm(n)
        xs, ys = x.index_select(0, perm), y.index_select(0, perm)
        for lo in range(0, n, s.batch_size):
            xb, yb = xs[lo : lo + s.batch_size], ys[lo : lo + s.batch_size]
            if amortized:
                loss = -amortized_bound(model, xb, num_samples=s.num_particles, normaliser=yb).objective
            else:
                loss = -elbo(model, family, xb, yb, dataset_size=n, num_particles=s.num_particles,
                             antithetic=s.antithetic).elbo / n
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
            if done >= steps:
                break
    return steps / (time.perf_counter() - start)


def minimal(config, data, steps: int) -> float:
    """The from-scratch loop of the same model and settings; steps per second."""
    s, m = config.train, config.model
    if m.kind == "vae":
        x, _ = split_tensors(data.train, data.features, data.target, None)
        return minimal_vae(x, steps=steps, batch_size=s.batch_size, latent=m.latent_dim, hidden=m.encoder_hidden[0],
                           total_count=float(m.total_count), lr=s.lr, betas=tuple(s.betas), seed=s.seed)
    x, y = split_tensors(data.train, data.features, data.target, standardization(data))
    return minimal_bnn(x, y, steps=steps, batch_size=s.batch_size, hidden=m.hidden[0], lr=s.lr, betas=tuple(s.betas),
                       num_particles=s.num_particles, init_scale=config.guide.init_scale, seed=s.seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from viops.cli import quiet_libraries

    quiet_libraries()  # Lightning's and MLflow's start-up lines, as in `viops train`
    work = Path(tempfile.mkdtemp(prefix="viops-bench-zoo-"))
    uri = f"sqlite:///{work / 'mlflow.db'}"
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    results = []
    try:
        for name, file in CASES.items():
            config = load_config(REPO / "configs" / "zoo" / file, parse_overrides([
                "train.early_stopping.enabled=false", "train.progress_bar=false", "registry.auto_register=false",
                f"tracking.experiment=bench-{name}"]))
            client.create_experiment(f"bench-{name}", artifact_location=(work / name).as_uri())
            data = prepare(config.data)
            train(config, prepared=data, tracking_uri=uri, register=False)  # warm-up
            viops, stepping, hand_rounds, least_rounds = [], [], [], []
            steps = planned_steps(len(data.train), config.train)  # early stopping is off: every run takes them all

            def fitted():
                result = train(config, prepared=data, tracking_uri=uri, register=False)
                seconds = result.metrics["train_seconds"]
                besides = result.metrics["validation_seconds"]
                besides += result.metrics.get("amortization_time_fraction", 0.0) * seconds
                if int(result.metrics["steps"]) != steps:  # the loops would be timed over a different count
                    raise RuntimeError(f"viops took {result.metrics['steps']:.0f} steps, {steps} were planned")
                viops.append(steps / seconds)
                stepping.append(steps / (seconds - besides))

            # The two loops on one torch thread and on all, round by round (viops' fit sets its own count).
            runs = [fitted, lambda: hand_rounds.append(at_each_thread_count(lambda: hand_written(config, data, steps))),
                    lambda: least_rounds.append(at_each_thread_count(lambda: minimal(config, data, steps)))]
            for i in range(args.rounds):  # each round starts with the next one: no way gets a fixed place
                for run in runs[i % 3:] + runs[: i % 3]:
                    run()
            (hand_threads, hand), (least_threads, least) = at_best_threads(hand_rounds), at_best_threads(least_rounds)
            v, h, m = float(np.median(viops)), float(np.median(hand)), float(np.median(least))
            st = float(np.median(stepping))
            results.append({"model": name, "steps": steps, "viops_steps_per_s": round(v, 1),
                            "viops_step_only_steps_per_s": round(st, 1),
                            "step_only_ratio_to_minimal": round(st / m, 3),
                            "hand_written_steps_per_s": round(h, 1), "minimal_steps_per_s": round(m, 1),
                            "ratio": round(v / h, 3), "ratio_to_minimal": round(v / m, 3),
                            "models_ratio_to_minimal": round(h / m, 3),
                            "batch_size": config.train.batch_size, "train_rows": len(data.train),
                            "threads": {"models": hand_threads, "minimal": least_threads},
                            "round_ratio_range": {name: [round(v, 3) for v in paired_ratios(rates, least)]
                                                  for name, rates in (("viops", viops), ("viops_steps", stepping),
                                                                      ("models", hand))}})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps({"results": results}))
    else:
        print("| model | train rows | batch | steps | minimal steps/s | models/ loop (ratio) | viops (ratio) "
              "| viops steps (ratio) |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in results:
            print(f"| {r['model']} | {r['train_rows']} | {r['batch_size']} | {r['steps']} | {r['minimal_steps_per_s']} "
                  f"| {r['hand_written_steps_per_s']} ({r['models_ratio_to_minimal']}) "
                  f"| {r['viops_steps_per_s']} ({r['ratio_to_minimal']}) "
                  f"| {r['viops_step_only_steps_per_s']} ({r['step_only_ratio_to_minimal']}) |")
        print("\nThe lowest and highest ratio to the minimal loop in a single round: " + "; ".join(
            f"{r['model']}: " + ", ".join(f"{n} {lo:.2f}-{hi:.2f}" for n, (lo, hi) in r["round_ratio_range"].items())
            for r in results))


if __name__ == "__main__":
    main()
