"""The real limits the training benchmarks measure viops against: a minimal loop written from scratch, and Pyro.

Neither touches ``models/``: a baseline that calls the project's own model code pays whatever that code costs and
hides it. Both run the same SVI problem as viops' Bayesian linear regression with a fixed noise scale, a mean-field
Gaussian q, ``num_particles`` reparameterised draws (antithetic pairs for the minimal loop, as viops), the minibatch
likelihood scaled by N/|B|, Adam, and rows shuffled once per epoch and sliced.

- :func:`minimal_blr`: the SVI maths and nothing else: no framework, no ``torch.distributions``, the KL of two
  diagonal Gaussians in closed form, one matmul for every particle, the learning rate written into Adam directly.
- :func:`pyro_blr`: Pyro's ``SVI`` with ``Trace_ELBO(num_particles, vectorize_particles=True)`` and ``AutoNormal``,
  the likelihood in a subsampled ``plate`` (Pyro scales it by N/|B|): as Pyro runs it by default (every
  distribution's arguments validated), or with that validation off, as Pyro's documentation advises for speed.
  Pyro is the ``bench`` extra (``pip install -e '.[bench]'``); without it :func:`pyro_blr` returns None.

The BNN and the VAE of the zoo configs have their own minimal loops, the same maths as viops' in the same plain
style (:func:`minimal_bnn`: Bayes by Backprop with local reparameterisation and a learned noise scale;
:func:`minimal_vae`: a factorised binomial decoder with the analytic Gaussian KL). Each returns steps per second
over exactly ``steps`` optimisation steps.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable

import torch
from torch.nn import functional as F

__all__ = ["at_best_threads", "at_each_thread_count", "cosine_lr", "minimal_blr", "minimal_bnn", "minimal_vae",
           "paired_ratios", "pyro_blr"]

LOG_2PI = math.log(2 * math.pi)


def _elapsed(start: float, device: torch.device) -> float:
    """Seconds since ``start``, once the device has finished the queued work (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def at_each_thread_count(run: Callable[[], float]) -> dict[int, float]:
    """``run()`` (steps per second) on one torch thread and on the process's number: ``{threads: rate}``.

    A baseline is the limit only at its best setting: on two cores the minimal BLR loop runs ~4% faster on one thread
    at batch 256 and ~6% faster on two at 4,096 (docs/benchmarks.md), while viops' fit picks its own count. Which
    count is faster is decided over the rounds, by :func:`at_best_threads`."""
    threads = torch.get_num_threads()
    rates = {}
    try:
        for count in sorted({1, threads}):
            torch.set_num_threads(count)
            rates[count] = run()
    finally:
        torch.set_num_threads(threads)
    return rates


def at_best_threads(rounds: list[dict[int, float]]) -> tuple[int, list[float]]:
    """The thread count whose median rate over ``rounds`` (each from :func:`at_each_thread_count`) is higher, and that
    count's rate round by round.

    Not the faster count of each round: on a machine whose speed wanders, the better of two draws would beat a single
    draw of the same loop, and the baseline would gain on viops by the noise alone."""
    counts = rounds[0].keys()
    best = max(counts, key=lambda count: statistics.median(r[count] for r in rounds))
    return best, [r[best] for r in rounds]


def paired_ratios(rates: list[float], baseline: list[float]) -> tuple[float, float]:
    """The lowest and highest of each round's ratio ``rates[i] / baseline[i]``: how far one round's ratio can stray
    from the ratio of the medians (rounds ran back to back, so a slow spell slows both sides of a pair)."""
    ratios = [a / b for a, b in zip(rates, baseline)]
    return min(ratios), max(ratios)


def cosine_lr(lr: float, floor: float, step: int, steps: int) -> float:
    """viops' schedule: cosine decay from ``lr`` to ``floor * lr`` over ``steps``."""
    return lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps)))


def minimal_blr(x: torch.Tensor, y: torch.Tensor, *, steps: int, batch_size: int, noise: float, prior_scale: float,
                lr: float, betas: tuple[float, float], final_lr_ratio: float, num_particles: int = 2,
                init_scale: float = 0.1, seed: int = 0) -> float:
    """Mean-field SVI of ``y ~ N(x w + b, noise)`` with ``w, b ~ N(0, prior_scale)``, from scratch."""
    torch.manual_seed(seed)
    n, p = x.shape
    d = p + 1
    loc = torch.zeros(d, requires_grad=True)
    raw_scale = torch.full((d,), init_scale + math.log(-math.expm1(-init_scale)), requires_grad=True)
    opt = torch.optim.Adam([loc, raw_scale], lr=lr, betas=betas, fused=True)
    half = (num_particles + 1) // 2
    log_norm = math.log(noise) + 0.5 * LOG_2PI
    unit = prior_scale == 1.0  # a N(0, 1) prior: the KL without dividing by one
    start = time.perf_counter()
    for done, _, xb, yb in _minibatches(x, y, batch_size, steps):
        scale = F.softplus(raw_scale)
        eps = torch.randn(half, d, device=x.device)
        eps = torch.cat([eps, -eps])[:num_particles]
        z = loc + scale * eps  # (S, d)
        mean = torch.addmm(z[:, p : p + 1], z[:, :p], xb.T)  # (S, B): one matmul for every particle
        log_lik = -0.5 * ((yb - mean) / noise).square() - log_norm
        expected = log_lik.sum(1).mean() * (n / xb.shape[0])
        var_ratio = (scale if unit else scale / prior_scale).square()
        kl = 0.5 * (var_ratio + (loc if unit else loc / prior_scale).square() - 1 - var_ratio.log()).sum()
        loss = (kl - expected) / n
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for group in opt.param_groups:
            group["lr"] = cosine_lr(lr, final_lr_ratio, done, steps)
        opt.step()
    return steps / _elapsed(start, x.device)


def pyro_blr(x: torch.Tensor, y: torch.Tensor, *, steps: int, batch_size: int, noise: float, prior_scale: float,
             lr: float, betas: tuple[float, float], num_particles: int = 2, seed: int = 0,
             validate: bool = True) -> float | None:
    """The same SVI in Pyro (``AutoNormal``, vectorised particles, subsampled plate); None without Pyro.

    ``validate``: Pyro's default (on), every distribution checking its arguments and values at every step; off, the
    setting Pyro recommends once a model is known to work."""
    try:
        import pyro
        import pyro.distributions as dist
        from pyro.infer import SVI, Trace_ELBO
        from pyro.infer.autoguide import AutoNormal
        from pyro.optim import Adam
    except ImportError:
        return None
    n, p = x.shape

    def model(xb, yb, rows):
        w = pyro.sample("w", dist.Normal(0.0, prior_scale).expand([p]).to_event(1))
        b = pyro.sample("b", dist.Normal(0.0, prior_scale))
        if w.dim() > 1:  # vectorised particles: w (S, 1, p), b (S, 1) -> mean (S, B)
            mean = (xb @ w.transpose(-1, -2)).squeeze(-1) + b
        else:  # Pyro's first, unvectorised trace of the model (the guide's prototype)
            mean = xb @ w + b
        with pyro.plate("data", n, subsample=rows):
            pyro.sample("y", dist.Normal(mean, noise), obs=yb)

    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    validating = torch.distributions.Distribution._validate_args
    pyro.enable_validation(validate)
    try:
        guide = AutoNormal(model)
        svi = SVI(model, guide, Adam({"lr": lr, "betas": betas}),
                  Trace_ELBO(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1))
        start = time.perf_counter()
        for _, rows, xb, yb in _minibatches(x, y, batch_size, steps):
            svi.step(xb, yb, rows)
        return steps / _elapsed(start, x.device)
    finally:  # it also set torch.distributions' validation for the whole process
        pyro.enable_validation(validating)


def _minibatches(x: torch.Tensor, y: torch.Tensor, batch_size: int, steps: int):
    """``steps`` minibatches ``(step, rows, x_rows, y_rows)``: rows shuffled once per epoch, then sliced."""
    n, done = x.shape[0], 0
    while True:
        perm = torch.randperm(n, device=x.device)
        xs, ys = x.index_select(0, perm), y.index_select(0, perm)
        for lo in range(0, n, batch_size):
            if done >= steps:
                return
            yield done, perm[lo : lo + batch_size], xs[lo : lo + batch_size], ys[lo : lo + batch_size]
            done += 1


def minimal_bnn(x: torch.Tensor, y: torch.Tensor, *, steps: int, batch_size: int, hidden: int, lr: float,
                betas: tuple[float, float], num_particles: int = 2, init_scale: float = 0.05, seed: int = 0,
                graphed: bool = False) -> float:
    """Mean-field SVI of a one-hidden-layer tanh network, ``y ~ N(f(x), sigma)``, weights ~ N(0, 1),
    sigma ~ HalfNormal(1) (learned, on the log scale), with locally reparameterised pre-activations and the
    Monte-Carlo KL of all latents, from scratch. ``graphed``: the whole step replayed as one CUDA graph."""
    torch.manual_seed(seed)
    n, p = x.shape
    sizes = [p * hidden, hidden, hidden, 1]  # W1, b1, W2, b2, then log sigma
    d = sum(sizes) + 1
    loc = torch.zeros(d)
    loc[: p * hidden] = torch.randn(p * hidden) / math.sqrt(p)
    loc[p * hidden + hidden : p * hidden + 2 * hidden] = torch.randn(hidden) / math.sqrt(hidden)
    loc = loc.to(x.device).requires_grad_(True)
    raw_scale = torch.full((d,), init_scale + math.log(-math.expm1(-init_scale)), device=x.device, requires_grad=True)
    opt = torch.optim.Adam([loc, raw_scale], lr=lr, betas=betas, fused=True, capturable=graphed)
    half = (num_particles + 1) // 2
    bounds = torch.tensor([0, *sizes]).cumsum(0).tolist()

    def step(xb: torch.Tensor, yb: torch.Tensor) -> None:
        scale = F.softplus(raw_scale)
        var = scale.square()
        eps = torch.randn(half, d, device=x.device)
        eps = torch.cat([eps, -eps])[:num_particles]
        z = loc + scale * eps
        w1, b1, w2, b2 = (loc[a:b] for a, b in zip(bounds[:-1], bounds[1:]))
        v1, c1, v2, c2 = (var[a:b] for a, b in zip(bounds[:-1], bounds[1:]))
        m = xb @ w1.view(p, hidden) + b1
        s2 = xb.square() @ v1.view(p, hidden) + c1
        h = torch.tanh(m + s2.sqrt() * torch.randn(num_particles, *m.shape, device=x.device))
        m = h @ w2.view(hidden, 1) + b2
        s2 = h.square() @ v2.view(hidden, 1) + c2
        out = (m + s2.sqrt() * torch.randn_like(m)).squeeze(-1)  # (S, B)
        log_sigma = z[:, -1:]
        log_lik = -0.5 * ((yb - out) / log_sigma.exp()).square() - log_sigma - 0.5 * LOG_2PI
        log_q = -0.5 * eps.square().sum(1) - scale.log().sum() - 0.5 * d * LOG_2PI
        weights = z[:, :-1]
        log_prior = (-0.5 * weights.square().sum(1) - 0.5 * (d - 1) * LOG_2PI
                     + math.log(2) - 0.5 * log_sigma[:, 0].exp().square() - 0.5 * LOG_2PI + log_sigma[:, 0])
        kl = (log_q - log_prior).mean()
        loss = (kl - log_lik.sum(1).mean() * (n / xb.shape[0])) / n
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return _run(step, x, y, batch_size, steps, graphed)


def minimal_vae(x: torch.Tensor, *, steps: int, batch_size: int, latent: int, hidden: int, total_count: float,
                lr: float, betas: tuple[float, float], seed: int = 0, graphed: bool = False) -> float:
    """A VAE with one hidden ReLU layer in the encoder and the decoder, a factorised binomial likelihood of counts out
    of ``total_count``, one draw of z per row and the analytic KL to N(0, I), from scratch. ``graphed``: the whole
    step replayed as one CUDA graph."""
    torch.manual_seed(seed)
    n, p = x.shape
    encoder = torch.nn.Sequential(torch.nn.Linear(p, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 2 * latent)
                                  ).to(x.device)
    decoder = torch.nn.Sequential(torch.nn.Linear(latent, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, p)
                                  ).to(x.device)
    opt = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=lr, betas=betas, fused=True,
                           capturable=graphed)
    # log C(total, x) per row: constant in the parameters, part of the bound's value
    log_choose = (math.lgamma(total_count + 1) - torch.lgamma(x + 1) - torch.lgamma(total_count - x + 1)).sum(1)

    def step(xb: torch.Tensor, choose: torch.Tensor) -> None:
        mu, raw = encoder(xb / total_count).chunk(2, dim=-1)
        sd = F.softplus(raw) + 1e-4
        z = mu + sd * torch.randn_like(sd)
        logits = decoder(z)
        log_lik = (xb * logits - total_count * F.softplus(logits)).sum(1) + choose
        kl = 0.5 * (sd.square() + mu.square() - 1).sum(1) - sd.log().sum(1)
        loss = -(log_lik - kl).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return _run(step, x, log_choose, batch_size, steps, graphed)


def _run(step, x: torch.Tensor, y: torch.Tensor, batch_size: int, steps: int, graphed: bool) -> float:
    """Steps per second of ``step(x_rows, y_rows)`` over ``steps`` minibatches.

    ``graphed`` (CUDA only): the step (forward, backward, Adam) is captured once as a CUDA graph on a full minibatch,
    as in PyTorch's whole-network capture recipe, and each minibatch is copied into the captured input and replayed:
    one launch per step instead of one per kernel. A shorter last minibatch of an epoch is skipped, not counted.
    """
    if not graphed:
        start = time.perf_counter()
        for _, _, xb, yb in _minibatches(x, y, batch_size, steps):
            step(xb, yb)
        return steps / _elapsed(start, x.device)
    static_x, static_y = x[:batch_size].clone(), y[:batch_size].clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up outside the graph (allocations, Adam's state)
        for _ in range(3):
            step(static_x, static_y)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step(static_x, static_y)
    replayed = 0
    start = time.perf_counter()
    for _, _, xb, yb in _minibatches(x, y, batch_size, steps):
        if xb.shape[0] == batch_size:
            static_x.copy_(xb)
            static_y.copy_(yb)
            graph.replay()
            replayed += 1
    return replayed / _elapsed(start, x.device)
