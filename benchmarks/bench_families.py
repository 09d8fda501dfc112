"""What the variational families cost against the paths they replaced, in one run: the flow family's SVI step
against zuko's draw-with-density, the low-rank family's KL to a Gaussian prior against torch's ``kl_divergence``,
and the full-rank family without a dense preconditioning map against the product with one.

**The flow step.** A training step with a flow guide needs draws of q and log q at each of them. zuko's
``NormalizingFlow.rsample_and_log_prob`` inverts each coupling layer in two passes of its conditioner network and
evaluates the conditioner a third time for the log-determinant; viops' family reads the log-determinant from the
spline of the last inversion pass (``models.families.flow``), two passes a layer. Both loops train the same
``NormalizingFlow`` (3 spline layers, hidden widths 32, 32, 8 bins, as ``guide.family: flow`` builds it) on a
Bayesian linear regression with a fixed noise scale and N(0, 1) priors (so the KL is estimated from the draws),
2 particles, Adam, minibatches sliced from rows shuffled once per epoch:

- **zuko**: ``flow.rsample_and_log_prob`` behind the family's affine map, the Gaussian log-likelihood and log prior
  written out, the minibatch scaled by N/|B|;
- **viops**: ``models.objectives.elbo`` with the same family.

Rounds are interleaved and each way runs on one torch thread and on all, counted at its faster count over the
rounds; the ratio is viops' steps per second over zuko's. A step of this small model is mostly dispatch, and the
timed ratio moves with the machine, so each way's aten operations per step (forward and backward, counted as
``benchmarks/step_costs.py`` counts them) are printed beside it.

**The low-rank KL.** Under a diagonal Gaussian prior, ``LowRankGaussian.kl_to`` computes the KL in closed form in
``O(D rank^2)`` (``models.families.gaussian.low_rank_gaussian_kl``). torch's ``kl_divergence`` pairs a
``LowRankMultivariateNormal`` only with a ``MultivariateNormal``, so the prior is rebuilt with a ``D x D`` factor,
as the base family does for torch. Each way's KL and its backward are timed at several latent dimensions (rank 4),
interleaved, medians of ``--rounds`` rounds.

**The full-rank step without a dense map.** A full-rank family preconditioned with marginal SDs only, or not at all,
scales the rows of its Cholesky factor; with a dense map (the Laplace approximation's factor) it multiplies by the
map, ``O(D^3)``. The script times the family's draws and KL to a N(0, 1) prior with their backward both ways, the
dense way with the identity as its map (what every full-rank family did before), at the same dimensions.

    python benchmarks/bench_families.py [--rounds 5] [--steps 300] [--batch-size 256] [--dims 100 1000 4000] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.distributions import Independent, MultivariateNormal, Normal, kl_divergence
from torch.nn import functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.baselines import at_best_threads, at_each_thread_count, paired_ratios  # noqa: E402
from benchmarks.step_costs import per_step  # noqa: E402
from models.blr import BayesianLinearRegression  # noqa: E402
from models.families import make_family  # noqa: E402
from models.objectives import elbo  # noqa: E402

FEATURES, ROWS, NOISE, PARTICLES = 10, 8192, 0.5, 2
LOG_2PI = math.log(2 * math.pi)


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(ROWS, FEATURES, generator=generator)
    y = x @ torch.randn(FEATURES, generator=generator) + 1.0 + NOISE * torch.randn(ROWS, generator=generator)
    return x, y


def _minibatches(x: torch.Tensor, y: torch.Tensor, batch_size: int, steps: int):
    done = 0
    while done < steps:
        perm = torch.randperm(x.shape[0])
        xs, ys = x.index_select(0, perm), y.index_select(0, perm)
        for lo in range(0, x.shape[0] - batch_size + 1, batch_size):
            yield xs[lo : lo + batch_size], ys[lo : lo + batch_size]
            done += 1
            if done >= steps:
                return


def _zuko_loss(family, xb: torch.Tensor, yb: torch.Tensor, n: int) -> torch.Tensor:
    """The negative ELBO per datum with zuko's draw-with-density behind the family's affine map."""
    flow = family.flow()
    u, log_q = flow.rsample_and_log_prob((PARTICLES,))
    scale = family.precond_scale * F.softplus(family.scale_unconstrained)
    z = torch.addcmul(family._loc(), scale, u)
    log_q = log_q - scale.log().sum()
    mean = torch.addmm(z[:, -1:], z[:, :-1], xb.T)  # (particles, rows)
    log_lik = -0.5 * ((yb - mean) / NOISE).square() - math.log(NOISE) - 0.5 * LOG_2PI
    log_prior = -0.5 * z.square().sum(-1) - 0.5 * z.shape[-1] * LOG_2PI
    expected = log_lik.sum() * (n / (xb.shape[0] * PARTICLES))
    return -(expected - (log_q - log_prior).mean()) / n


def run(way: str, x: torch.Tensor, y: torch.Tensor, *, steps: int, batch_size: int, seed: int = 0) -> float:
    """Train a fresh flow guide for ``steps`` steps the given way; steps per second."""
    torch.manual_seed(seed)
    model = BayesianLinearRegression(FEATURES, Normal(0.0, 1.0), Normal(0.0, 1.0), noise_scale=NOISE)
    family = make_family("flow", model.latent_dim, init_scale=0.1)
    optimizer = torch.optim.Adam(family.parameters(), lr=0.01)
    n = x.shape[0]
    start = time.perf_counter()
    for xb, yb in _minibatches(x, y, batch_size, steps):
        if way == "viops":
            loss = -elbo(model, family, xb, yb, dataset_size=n, num_particles=PARTICLES).elbo / n
        else:
            loss = _zuko_loss(family, xb, yb, n)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps / (time.perf_counter() - start)


def low_rank_kl_seconds(dim: int, way: str, rank: int = 4, budget: float = 0.2) -> float:
    """Seconds for one KL of a low-rank family to a N(0, 2^2) prior and its backward, the given way (repeated for
    about ``budget`` seconds)."""
    torch.manual_seed(0)
    family = make_family("low_rank", dim, rank=rank, init_scale=0.3)
    prior = Independent(Normal(torch.zeros(dim), torch.full((dim,), 2.0)), 1)

    def once() -> torch.Tensor:
        if way == "viops":
            return family.kl_to(prior)
        dense = MultivariateNormal(prior.base_dist.loc, scale_tril=torch.diag_embed(prior.base_dist.scale),
                                   validate_args=False)
        return kl_divergence(family.distribution(), dense)

    return _timed(lambda: once().backward(), budget)


def full_rank_step_seconds(dim: int, way: str, budget: float = 0.2) -> float:
    """Seconds for a full-rank family's 2 draws and KL to N(0, I) with their backward; ``way`` "dense": with the
    identity as a dense preconditioning map, "diagonal": without one."""
    family = make_family("full_rank", dim, init_scale=0.3)
    if way == "dense":
        family._diagonal_map = False  # multiply by the (identity) map, as a dense map is multiplied
    prior = Independent(Normal(torch.zeros(dim), torch.ones(dim)), 1)

    def once() -> None:
        z, kl = family.rsample_and_kl(2, prior, antithetic=True)
        (kl + z.sum()).backward()

    return _timed(once, budget)


def _timed(once, budget: float) -> float:
    start = time.perf_counter()
    once()  # warm-up, and how many repeats fit in the budget
    repeats = max(3, int(budget / (time.perf_counter() - start)))
    start = time.perf_counter()
    for _ in range(repeats):
        once()
    return (time.perf_counter() - start) / repeats


def paired_report(dims: list[int], rounds: int, seconds_of, before: str, after: str) -> list[dict]:
    """``seconds_of(dim, way)`` for the ways ``before`` and ``after``, interleaved over ``rounds``; medians in ms."""
    rows = []
    for dim in dims:
        seconds = {before: [], after: []}
        for i in range(rounds):
            for way in ((before, after) if i % 2 == 0 else (after, before)):
                seconds[way].append(seconds_of(dim, way))
        before_ms, after_ms = (statistics.median(seconds[w]) * 1e3 for w in (before, after))
        rows.append({"dim": dim, f"{before}_ms": round(before_ms, 3), f"{after}_ms": round(after_ms, 3),
                     "speed_up": round(before_ms / after_ms, 1)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--dims", type=int, nargs="+", default=[100, 1000, 4000])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    x, y = _data()
    ways = ("zuko", "viops")
    for way in ways:  # warm-up
        run(way, x, y, steps=20, batch_size=args.batch_size)
    rounds = {way: [] for way in ways}
    for i in range(args.rounds):
        for way in ways[i % 2:] + ways[: i % 2]:  # alternate which way goes first
            rounds[way].append(at_each_thread_count(
                lambda way=way: run(way, x, y, steps=args.steps, batch_size=args.batch_size)))
    ops = {way: per_step(lambda n, way=way: run(way, x, y, steps=n, batch_size=args.batch_size), 10, 30).aten_ops
           for way in ways}
    best = {way: at_best_threads(rounds[way]) for way in ways}
    rates = {way: rate for way, (_, rate) in best.items()}
    report = {
        "batch_size": args.batch_size, "steps": args.steps, "rounds": args.rounds,
        "steps_per_s": {way: round(statistics.median(r), 1) for way, r in rates.items()},
        "threads": {way: threads for way, (threads, _) in best.items()},
        "aten_ops_per_step": {way: round(count, 1) for way, count in ops.items()},
        "viops_over_zuko": round(statistics.median(rates["viops"]) / statistics.median(rates["zuko"]), 3),
        "round_ratio_range": [round(v, 3) for v in paired_ratios(rates["viops"], rates["zuko"])],
    }
    low_rank = paired_report(args.dims, args.rounds, low_rank_kl_seconds, "torch", "viops")
    full_rank = paired_report(args.dims, args.rounds, full_rank_step_seconds, "dense", "diagonal")
    if args.json:
        print(json.dumps({"flow": report, "low_rank_kl": low_rank, "full_rank_step": full_rank}))
        return
    print("| batch | zuko steps/s | viops steps/s | viops / zuko | single rounds | aten ops a step (zuko, viops) |")
    print("|---:|---:|---:|---:|---|---|")
    lo, hi = report["round_ratio_range"]
    counted = report["aten_ops_per_step"]
    print(f"| {args.batch_size} | {report['steps_per_s']['zuko']} | {report['steps_per_s']['viops']} "
          f"| {report['viops_over_zuko']} | {lo:.2f}-{hi:.2f} | {counted['zuko']:,.0f}, {counted['viops']:,.0f} |")
    print("\nThe low-rank family's KL to a diagonal Gaussian prior with its backward (rank 4), ms:\n")
    print("| latents | torch `kl_divergence` | viops | speed-up |")
    print("|---:|---:|---:|---:|")
    for row in low_rank:
        print(f"| {row['dim']:,} | {row['torch_ms']} | {row['viops_ms']} | {row['speed_up']}x |")
    print("\nThe full-rank family's draws and KL with their backward, ms:\n")
    print("| latents | through a dense identity map | rows scaled | speed-up |")
    print("|---:|---:|---:|---:|")
    for row in full_rank:
        print(f"| {row['dim']:,} | {row['dense_ms']} | {row['diagonal_ms']} | {row['speed_up']}x |")


if __name__ == "__main__":
    main()
