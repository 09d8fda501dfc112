"""GPU training throughput (``make bench-gpu``): viops and a minimal loop, on CUDA and on the CPU, in one run.

Two workloads, each trained by ``viops`` (``trainer.fit`` with full telemetry, ``train.accelerator`` set to the
device) and by the from-scratch minimal loop of ``benchmarks/baselines.py`` on the same device, for the same number
of steps:

- **BNN**: ``configs/zoo/bnn_diabetes.yaml``'s network (local reparameterisation, learned noise) on a synthetic table
  of ``--bnn-rows`` rows (1M) × 20 features, batch 4,096;
- **VAE**: ``configs/zoo/vae_digits.yaml`` on scikit-learn's digits upsampled to ``--vae-rows`` rows (each a digit
  redrawn as binomial counts around its own pixels), batch 1,024;

then both again at batches 65,536 and 16,384 with ten times the epochs (``--no-large`` skips them). On CUDA the
minimal loop also runs as one CUDA graph per step (``graphed=True``): the GPU's throughput once the host's kernel
launches are out of the way. viops runs there twice: as configured, which replays its step's CUDA graph
(``train.cuda_graph``, the default), and with ``train.cuda_graph=false`` (the eager step).

Scoring: the BNN that viops trained on the CPU is registered and loaded as ``viops score`` loads it, then
``--score-rows`` rows are scored with ``--score-samples`` posterior draws each, on each device: ``score_frame`` (the
pyfunc with signature enforcement, batches of 10,000 rows, ``device`` as its param) and, as the reference,
``models.predictive.posterior_predictive`` alone on tensors already on the device.

It prints steps/s and rows/s per device, the GPU/CPU ratios and viops' ratio to the minimal loop on each device,
with the card's name. Without a CUDA device it measures the CPU only and says so.

    python benchmarks/bench_gpu.py [--bnn-rows 1000000] [--vae-rows 200000] [--epochs 3] [--no-large] [--no-small]
                                   [--score-rows 200000] [--score-samples 100] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from mlflow import MlflowClient

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.baselines import minimal_bnn, minimal_vae  # noqa: E402
from pipelines.config.loading import load_config, parse_overrides  # noqa: E402
from pipelines.lifecycle.train import train  # noqa: E402
from pipelines.training.data import prepare  # noqa: E402
from pipelines.training.evaluation import split_tensors, standardization  # noqa: E402

FEATURES = 20


def bnn_table(rows: int, path: Path) -> Path:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, FEATURES))
    w = rng.normal(size=(FEATURES, 8)) / np.sqrt(FEATURES)
    y = np.tanh(x @ w) @ rng.normal(size=8) + 0.3 * rng.normal(size=rows)
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(FEATURES)]).assign(y=y)
    frame.to_parquet(path, index=False)
    return path


def vae_table(rows: int, path: Path) -> Path:
    from sklearn.datasets import load_digits

    digits = load_digits().data
    rng = np.random.default_rng(0)
    base = digits[rng.integers(len(digits), size=rows)]
    counts = rng.binomial(16, np.clip((base + 0.5) / 17.0, 0.0, 1.0))
    frame = pd.DataFrame(counts.astype(float), columns=[f"pixel_{i}" for i in range(counts.shape[1])])
    frame.assign(target=0.0).to_parquet(path, index=False)
    return path


def measure(name: str, config, data, device: str, uri: str) -> dict:
    """viops and the minimal loop of ``config`` on ``device`` (and, on CUDA, the minimal loop as one CUDA graph):
    steps per second each."""
    config = config.model_copy(update={"train": config.train.model_copy(update={
        "accelerator": "gpu" if device == "cuda" else "cpu", "devices": 1})})
    # Warm-up first, for each implementation: CUDA loads a kernel's module at its first launch, and the caching
    # allocator and cuBLAS set themselves up on first use. Measured cold, whichever ran first paid for both.
    warm = config.model_copy(update={"train": config.train.model_copy(update={"max_epochs": 1})})
    train(warm, prepared=data, tracking_uri=uri, register=False)
    result = train(config, prepared=data, tracking_uri=uri, register=False)
    steps = int(result.metrics["steps"])
    viops = steps / result.metrics["train_seconds"]
    # The checks during training count in viops' time (the minimal loop has none): their share of it.
    validation = result.metrics["validation_seconds"] / result.metrics["train_seconds"]
    eager = graphed_steps = None
    if device == "cuda":  # the default replays the step's CUDA graph; the eager step too, for the difference it makes
        graphed_steps = int(result.metrics.get("graphed_steps", 0))
        plain = config.model_copy(update={"train": config.train.model_copy(update={"cuda_graph": False})})
        again = train(plain, prepared=data, tracking_uri=uri, register=False).metrics
        eager = round(again["steps"] / again["train_seconds"], 1)
    s, m = config.train, config.model
    if m.kind == "vae":
        x, _ = split_tensors(data.train, data.features, data.target, None)
        x = x.to(device)

        def minimal(graphed: bool, steps: int = steps) -> float:
            return minimal_vae(x, steps=steps, batch_size=s.batch_size, latent=m.latent_dim, hidden=m.encoder_hidden[0],
                               total_count=float(m.total_count), lr=s.lr, betas=tuple(s.betas), seed=s.seed,
                               graphed=graphed)
    else:
        x, y = split_tensors(data.train, data.features, data.target, standardization(data))
        x, y = x.to(device), y.to(device)

        def minimal(graphed: bool, steps: int = steps) -> float:
            return minimal_bnn(x, y, steps=steps, batch_size=s.batch_size, hidden=m.hidden[0], lr=s.lr,
                               betas=tuple(s.betas), num_particles=s.num_particles,
                               init_scale=config.guide.init_scale, seed=s.seed, graphed=graphed)
    minimal(False, steps=min(steps, 100))  # warm-up
    least = minimal(False)
    graphed = None
    if device == "cuda":
        try:
            graphed = round(minimal(True), 1)
        except Exception as error:  # noqa: BLE001 - reported, not fatal: the graphed loop is a reference point
            print(f"{name}: the CUDA-graph minimal loop failed: {error!r}", file=sys.stderr)
    row = {"model": name, "device": device, "steps": steps, "train_rows": len(data.train), "run_id": result.run_id,
           "batch_size": s.batch_size, "viops_steps_per_s": round(viops, 1), "viops_eager_steps_per_s": eager,
           "graphed_steps": graphed_steps, "validation_share": round(validation, 3),
           "minimal_steps_per_s": round(least, 1),
           "minimal_graphed_steps_per_s": graphed, "ratio_to_minimal": round(viops / least, 3),
           "ratio_to_graphed_minimal": round(viops / graphed, 3) if graphed else None}
    print(json.dumps(row), file=sys.stderr, flush=True)  # as it comes: a run cut short still shows what it measured
    return row


def scoring(client, uri: str, run_id: str, data, devices: list[str], rows: int, samples: int) -> list[dict]:
    """Rows/s of ``viops score``'s loop and of the predictive summaries alone, on each device, for the BNN that
    ``run_id`` trained."""
    import copy
    import time

    from models.predictive import posterior_predictive
    from pipelines.registry.versions import register_run
    from pipelines.serving.loading import load_version
    from pipelines.serving.scoring import score_frame

    version = register_run(client, run_id, "bench-gpu-bnn").version
    loaded = load_version(client, "bench-gpu-bnn", str(version), tracking_uri=uri)
    frame = data.train[list(data.features)]
    features = pd.concat([frame] * -(-rows // len(frame))).head(rows).reset_index(drop=True)
    bundle = loaded.predictor.bundle  # the pyfunc standardises its input: so does the reference
    x = torch.from_numpy(np.ascontiguousarray(features.to_numpy(np.float32)))  # row-major, as viops scores
    if bundle.feature_mean:
        x = (x - torch.tensor(bundle.feature_mean)) / torch.tensor(bundle.feature_scale)
    out = []
    for device in devices:
        score_frame(loaded, features.head(20_000), num_samples=samples, device=device)  # warm-up
        began = time.perf_counter()
        score_frame(loaded, features, num_samples=samples, device=device)
        viops = rows / (time.perf_counter() - began)
        model, family = (copy.deepcopy(m).to(device) for m in (loaded.predictor.model, loaded.predictor.family))
        on = x.to(device)
        generator = torch.Generator(device=device).manual_seed(0)
        posterior_predictive(model, family, on[:20_000], num_samples=samples, generator=generator)  # warm-up
        began = time.perf_counter()
        for start in range(0, rows, 10_000):
            posterior_predictive(model, family, on[start:start + 10_000], num_samples=samples, generator=generator)
        if device == "cuda":
            torch.cuda.synchronize()
        core = rows / (time.perf_counter() - began)
        out.append({"device": device, "rows": rows, "samples": samples, "viops_rows_per_s": round(viops),
                    "predictive_rows_per_s": round(core)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bnn-rows", type=int, default=1_000_000)
    parser.add_argument("--vae-rows", type=int, default=200_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--no-large", dest="large", action="store_false",
                        help="skip the large-batch cases (BNN 65,536, VAE 16,384, ten times the epochs)")
    parser.add_argument("--no-small", dest="small", action="store_false",
                        help="skip the cases at the targets' batch sizes (BNN 4,096, VAE 1,024)")
    parser.add_argument("--score-rows", type=int, default=200_000)
    parser.add_argument("--score-samples", type=int, default=100)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from viops.cli import quiet_libraries

    quiet_libraries()  # Lightning's and MLflow's start-up lines, as in `viops train`
    devices = ["cuda", "cpu"] if torch.cuda.is_available() else ["cpu"]
    card = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    if card is None:
        print("no CUDA device here: measuring the CPU only (run on a GPU machine for the GPU/CPU ratios)",
              file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="viops-bench-gpu-"))
    uri = f"sqlite:///{work / 'mlflow.db'}"
    # The end-of-training diagnostics are not what is measured (train_seconds is the fit's): their smallest sizes.
    common = ["train.early_stopping.enabled=false", "train.progress_bar=false", "registry.auto_register=false",
              "data.split.validation=0.02", "data.split.test=0.02", "train.diagnostic_rows=10000",
              "train.khat_samples=100"]
    bnn = [f"data.path={bnn_table(args.bnn_rows, work / 'bnn.parquet')}", "data.target=y", "data.sklearn=null"]
    vae = [f"data.path={vae_table(args.vae_rows, work / 'vae.parquet')}", "data.target=target", "data.sklearn=null"]
    # The batch sizes of the targets in docs/benchmarks.md, then large ones where a step holds enough work for a GPU.
    cases = [("bnn", "bnn_diabetes.yaml", bnn, 4096, args.epochs), ("vae", "vae_digits.yaml", vae, 1024, args.epochs)]
    cases = cases if args.small else []
    if args.large:
        cases += [("bnn", "bnn_diabetes.yaml", bnn, 65_536, 10 * args.epochs),
                  ("vae", "vae_digits.yaml", vae, 16_384, 10 * args.epochs)]
    client = MlflowClient(tracking_uri=uri)
    for name in ("bnn", "vae"):  # artifacts in the temporary folder, not in ./mlruns
        client.create_experiment(f"bench-gpu-{name}", artifact_location=(work / name).as_uri())
    results, prepared = [], {}
    try:
        for name, file, overrides, batch, epochs in cases:
            config = load_config(REPO / "configs" / "zoo" / file, parse_overrides([
                *common, *overrides, f"train.batch_size={batch}", f"train.max_epochs={epochs}",
                f"tracking.experiment=bench-gpu-{name}"]))
            if name not in prepared:  # one table per model, for every batch size and device
                prepared[name] = prepare(config.data)
            for device in devices:
                results.append(measure(name, config, prepared[name], device, uri))
        trained = next(r["run_id"] for r in results if r["model"] == "bnn" and r["device"] == "cpu")
        scored = scoring(client, uri, trained, prepared["bnn"], devices, args.score_rows, args.score_samples)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    by = {(r["model"], r["batch_size"], r["device"]): r for r in results}
    for r in results:
        cpu = by[(r["model"], r["batch_size"], "cpu")]
        r["speedup_over_cpu"] = round(r["viops_steps_per_s"] / cpu["viops_steps_per_s"], 2)
        r["minimal_speedup_over_cpu"] = round(r["minimal_steps_per_s"] / cpu["minimal_steps_per_s"], 2)
    for r in scored:
        r["speedup_over_cpu"] = round(r["viops_rows_per_s"] / scored[-1]["viops_rows_per_s"], 2)
    if args.json:
        print(json.dumps({"card": card, "results": results, "scoring": scored}))
        return
    print(f"card: {card or 'none (CPU only)'}, torch {torch.__version__}, {os.cpu_count()} CPU cores")
    print("viops: its default, which on CUDA replays the step's CUDA graph (train.cuda_graph); viops eager: "
          "train.cuda_graph=false")
    print("| model | device | rows | batch | steps | minimal steps/s | minimal, one CUDA graph | viops steps/s "
          "| viops eager | graphed steps | validation share | viops / minimal | viops / graphed minimal "
          "| viops GPU / CPU | minimal GPU / CPU |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['model']} | {r['device']} | {r['train_rows']:,} | {r['batch_size']:,} | {r['steps']} | "
              f"{r['minimal_steps_per_s']} | {r['minimal_graphed_steps_per_s'] or '-'} | {r['viops_steps_per_s']} | "
              f"{r['viops_eager_steps_per_s'] or '-'} | {r['graphed_steps'] if r['graphed_steps'] is not None else '-'}"
              f" | {r['validation_share']} | {r['ratio_to_minimal']} | {r['ratio_to_graphed_minimal'] or '-'} | "
              f"{r['speedup_over_cpu']} | {r['minimal_speedup_over_cpu']} |")
    print(f"\nScoring the BNN: {args.score_rows:,} rows, {args.score_samples} posterior draws each")
    print("| device | viops score loop, rows/s | predictive summaries alone, rows/s | viops / alone "
          "| viops GPU / CPU |")
    print("|---|---:|---:|---:|---:|")
    for r in scored:
        print(f"| {r['device']} | {r['viops_rows_per_s']:,} | {r['predictive_rows_per_s']:,} | "
              f"{r['viops_rows_per_s'] / r['predictive_rows_per_s']:.2f} | {r['speedup_over_cpu']} |")

if __name__ == "__main__":
    main()
