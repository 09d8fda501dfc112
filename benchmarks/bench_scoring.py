"""Scoring throughput and single-row latency of a registered model.

A Bayesian linear regression with 20 features is trained and registered in a temporary SQLite MLflow store, then:

- **batch**: ``viops score``'s loop (``pipelines.scoring.score_frame``: the pyfunc with signature enforcement, batches
  of 10,000 rows) on 100,000 rows with S = 100 posterior draws, against a baseline in the same run that computes the
  same predictive summaries with a Python loop over the S draws (one ``model.predictive`` call per draw);
- **single-row requests**: p50/p95 latency of ``predict`` on one row, in-process through the pyfunc, and over HTTP
  to a real ``mlflow models serve`` process (``--no-http`` skips it); and of the predictive computation alone,
  vectorised over the S draws vs the loop over draws.

    python benchmarks/bench_scoring.py [--rows 100000] [--samples 100] [--requests 200] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipelines.config.loading import load_config, parse_overrides  # noqa: E402
from pipelines.lifecycle.train import train  # noqa: E402
from pipelines.serving.loading import load_version  # noqa: E402
from pipelines.serving.scoring import score_frame  # noqa: E402

FEATURES = 20


def _train(root: Path, uri: str, seed: int = 0) -> str:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5000, FEATURES))
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(FEATURES)])
    frame["y"] = x @ rng.normal(size=FEATURES) + 0.5 + 0.3 * rng.normal(size=len(x))
    frame.to_csv(root / "train.csv", index=False)
    (root / "bench.yaml").write_text(
        "name: bench-scoring\ndata: {path: train.csv, target: y}\n"
        "model: {kind: bayesian_linear_regression, noise: {learned: {half_normal: {scale: 1.0}}}}\n"
        "guide: {family: full_rank}\ntrain: {batch_size: 256, max_epochs: 40, lr: 0.01}\n"
    )
    result = train(load_config(root / "bench.yaml", parse_overrides([f"train.seed={seed}"])), tracking_uri=uri)
    return str(result.model_version)


def looped(predictor, x: torch.Tensor, num_samples: int, generator: torch.Generator) -> dict:
    """The baseline: the same summaries as ``posterior_predictive``, one draw of z at a time."""
    model, family = predictor.model, predictor.family
    noise = torch.randn((num_samples, family.noise_dim), generator=generator)
    z = family.transform_noise(noise)
    means, variances, draws = [], [], []
    with torch.no_grad():
        for s in range(num_samples):
            pred = model.predictive(z[s:s + 1], x)
            means.append(pred.mean[0])
            variances.append(pred.variance[0])
            draws.append(pred.mean[0] + pred.stddev[0] * torch.randn(pred.mean.shape[1:], generator=generator))
        mean_s = torch.stack(means)
        y = torch.stack(draws)
        q = torch.quantile(y, torch.tensor([0.05, 0.95]), dim=0)
        return {"mean": mean_s.mean(0), "sd": (mean_s.var(0, unbiased=False) + torch.stack(variances).mean(0)).sqrt(),
                "q05": q[0], "q95": q[1]}


def _percentiles(ms: list[float]) -> dict:
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p95_ms": round(float(np.percentile(ms, 95)), 3)}


def _http_latency(uri: str, model_uri: str, rows: pd.DataFrame, requests: int, root: Path) -> dict:
    sys.path.insert(0, str(REPO))
    from tests.conftest import free_port

    port = free_port()
    log = open(root / "serve.log", "w")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", model_uri,
         "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, cwd=root,
        env={**os.environ, "MLFLOW_TRACKING_URI": uri,
             "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mlflow models serve did not start: {(root / 'serve.log').read_text()[-2000:]}")
                time.sleep(0.5)
        times = []
        for i in range(requests + 5):
            row = rows.iloc[[i % len(rows)]]
            body = json.dumps({"dataframe_split": {"columns": list(row.columns), "data": row.to_numpy().tolist()}})
            request = urllib.request.Request(f"{url}/invocations", data=body.encode(),
                                             headers={"Content-Type": "application/json"})
            began = time.perf_counter()
            with urllib.request.urlopen(request, timeout=30) as resp:
                resp.read()
            if i >= 5:  # the first requests warm the server up
                times.append((time.perf_counter() - began) * 1000)
        return _percentiles(times)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--no-http", action="store_true", help="skip the mlflow models serve measurement")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from mlflow import MlflowClient

    from viops.cli import quiet_libraries

    quiet_libraries()
    root = Path(tempfile.mkdtemp(prefix="viops-bench-scoring-"))
    os.chdir(root)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    version = _train(root, uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    loaded = load_version(client, "bench-scoring", version, tracking_uri=uri)
    rng = np.random.default_rng(1)
    features = pd.DataFrame(rng.normal(size=(args.rows, FEATURES)), columns=[f"x{i}" for i in range(FEATURES)])

    score_frame(loaded, features.head(1000), num_samples=args.samples)  # warm-up
    began = time.perf_counter()
    predictions, batch_seconds = score_frame(loaded, features, batch_size=10_000, num_samples=args.samples)
    viops_seconds = time.perf_counter() - began

    x = torch.from_numpy(features.to_numpy(np.float32))  # the model was trained on unstandardised features
    began = time.perf_counter()
    for start in range(0, args.rows, 10_000):
        looped(loaded.predictor, x[start:start + 10_000], args.samples, torch.Generator().manual_seed(0))
    loop_seconds = time.perf_counter() - began

    from models.predictive import posterior_predictive

    core = {"vectorised": [], "loop_over_samples": []}
    for i in range(args.requests + 5):
        row = x[i:i + 1]
        for name, fn in (("vectorised", lambda r: posterior_predictive(loaded.predictor.model, loaded.predictor.family,
                                                                         r, num_samples=args.samples)),
                         ("loop_over_samples", lambda r: looped(loaded.predictor, r, args.samples, torch.Generator()))):
            t = time.perf_counter()
            fn(row)
            if i >= 5:
                core[name].append((time.perf_counter() - t) * 1000)

    in_process = []
    for i in range(args.requests + 5):
        row = features.iloc[[i]]
        t = time.perf_counter()
        loaded.pyfunc.predict(row)
        if i >= 5:
            in_process.append((time.perf_counter() - t) * 1000)
    report = {
        "rows": args.rows, "posterior_samples": args.samples, "features": FEATURES,
        "batch": {
            "viops_rows_per_second": round(args.rows / viops_seconds),
            "loop_over_samples_rows_per_second": round(args.rows / loop_seconds),
            "speedup": round(loop_seconds / viops_seconds, 2),
            "batch_latency_ms": _percentiles([s * 1000 for s in batch_seconds]),
            "finite": bool(np.isfinite(predictions.to_numpy()).all()),
        },
        "single_row_predictive_only": {name: _percentiles(ms) for name, ms in core.items()},
        "single_row_in_process": _percentiles(in_process),
        "threads": torch.get_num_threads(),
    }
    if not args.no_http:
        report["single_row_http"] = _http_latency(uri, f"models:/bench-scoring/{version}", features, args.requests,
                                                  root)
    if args.json:
        print(json.dumps(report))
    else:
        print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
