"""What one SVI step costs, counted instead of timed: aten operations, host reads and Python calls per step.

A timed ratio carries the machine's noise: on a 2-core machine whose speed wanders, one run's ratios to the minimal
loop spread by up to 0.27 (docs/benchmarks.md), wider than any target's margin. What a step *does* does not wander:
how many aten operations it dispatches, how often it reads a value back to the host (on a GPU each read waits for the
device) and how many Python functions it calls. This counts them for the three BLR loops of
``bench_blr_training.py`` (the minimal loop, the bare ``models/`` loop and viops' fit with full telemetry).

Each count is the difference between two runs of different lengths, divided by the difference in steps, so set-up,
the final metrics and whatever a run does a fixed number of times cancel out (a short viops run validates 20 times
whatever its length). Python calls are counted in separate runs from aten operations: the counter of one would be
counted by the other.

- **aten ops**: operations dispatched to PyTorch's kernels, forward and backward (a ``TorchDispatchMode``);
- **host reads**: ``aten._local_scalar_dense`` (``.item()``, ``float()``, ``bool()`` of a tensor) and calls of
  ``Tensor.tolist``, ``Tensor.numpy`` and ``Tensor.cpu``, which on a GPU copy to the host and wait for the device;
- **Python calls**: Python functions entered (``sys.setprofile``), the interpreter's share of a small model's step.

    python benchmarks/step_costs.py [--batch-size 256] [--json]
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # noqa: E402

__all__ = ["StepCosts", "count_ops", "count_python", "per_step", "HOST_READ_OPS", "HOST_READ_METHODS"]

#: aten operations that read a tensor's value back to the host.
HOST_READ_OPS = ("aten._local_scalar_dense.default",)
#: Tensor methods that copy a tensor to the host (no aten operation on a CPU tensor; a device-to-host copy on a GPU).
HOST_READ_METHODS = ("tolist", "numpy", "cpu")


class _OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))


def count_ops(run: Callable[[], object]) -> collections.Counter:
    """The aten operations ``run()`` dispatches, by name."""
    with _OpCounter() as counter:
        run()
    return counter.ops


def count_python(run: Callable[[], object]) -> collections.Counter:
    """Python functions entered by ``run()`` (key ``"python"``) and calls of :data:`HOST_READ_METHODS` (by name).

    Only the calling thread is counted (``sys.setprofile``): a fit's background threads (telemetry, heartbeat) are not
    part of its step."""
    counts: collections.Counter = collections.Counter()

    def profile(frame, event, arg):
        if event == "call":
            counts["python"] += 1
        elif event == "c_call" and getattr(arg, "__name__", None) in HOST_READ_METHODS \
                and getattr(getattr(arg, "__self__", None), "device", None) is not None:
            counts[arg.__name__] += 1

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(previous)
    return counts


@dataclass(frozen=True)
class StepCosts:
    """What one step of a loop does, on average over the steps between two runs."""

    aten_ops: float  #: aten operations dispatched (forward and backward)
    host_reads: float  #: values read back to the host (:data:`HOST_READ_OPS`, :data:`HOST_READ_METHODS`)
    python_calls: float  #: Python functions entered
    ops: dict[str, float]  #: aten operations by name (negative where the short run dispatched more)


def per_step(run: Callable[[int], object], short: int, long: int, steps: Callable[[int], int] | None = None
             ) -> StepCosts:
    """Counts per step of ``run(n)``, from its runs at ``n = short`` and ``n = long``; ``steps(n)`` is how many SVI
    steps ``run(n)`` takes (``n`` itself by default)."""
    steps = steps or (lambda n: n)
    span = steps(long) - steps(short)
    if span <= 0:
        raise ValueError(f"the long run must take more steps than the short one ({steps(long)} <= {steps(short)})")
    ops = count_ops(lambda: run(long))
    ops.subtract(count_ops(lambda: run(short)))
    calls = count_python(lambda: run(long))
    calls.subtract(count_python(lambda: run(short)))
    reads = sum(ops[name] for name in HOST_READ_OPS) + sum(calls[name] for name in HOST_READ_METHODS)
    return StepCosts(aten_ops=sum(ops.values()) / span, host_reads=reads / span, python_calls=calls["python"] / span,
                     ops={name: count / span for name, count in ops.most_common() if count})


def main() -> None:
    from benchmarks.baselines import minimal_blr
    from benchmarks.bench_blr_training import CONFIG, over_models, workspace
    from pipelines.config.loading import load_config
    from pipelines.lifecycle.train import train
    from pipelines.training.data import prepare
    from pipelines.training.evaluation import split_tensors
    from viops.cli import quiet_libraries

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=65_536)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, nargs=2, default=[10, 20], metavar=("SHORT", "LONG"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    quiet_libraries()

    work, uri = workspace(args.rows, args.features, "viops-step-costs-")
    configs = {}
    for epochs in args.epochs:
        (work / f"{epochs}.yaml").write_text(CONFIG.format(batch=args.batch_size, epochs=epochs, telemetry="true"))
        configs[epochs] = load_config(work / f"{epochs}.yaml")
    config = configs[args.epochs[0]]
    data = prepare(config.data)
    xt, yt = split_tensors(data.train, data.features, data.target, None)
    per_pass = math.ceil(len(xt) / args.batch_size)
    s = config.train

    def minimal(epochs: int) -> None:
        minimal_blr(xt, yt, steps=epochs * per_pass, batch_size=args.batch_size, noise=0.5, prior_scale=1.0, lr=s.lr,
                    betas=tuple(s.betas), final_lr_ratio=s.schedule.final_lr_ratio, num_particles=s.num_particles,
                    seed=s.seed)

    def viops(epochs: int) -> None:
        train(configs[epochs], prepared=data, tracking_uri=uri, register=False)

    viops(args.epochs[0])  # warm-up: imports, the store's schema
    loops = {"minimal": minimal, "models": lambda epochs: over_models(config, data, epochs * per_pass),
             "viops": viops}
    costs = {name: per_step(run, *args.epochs, steps=lambda epochs: epochs * per_pass) for name, run in loops.items()}

    print(f"per SVI step (BLR, {args.features} features, batch {args.batch_size}; runs of {args.epochs[0]} and "
          f"{args.epochs[1]} epochs, {per_pass} steps each):")
    print(f"{'':>8} {'aten ops':>9} {'host reads':>11} {'Python calls':>13}")
    for name, c in costs.items():
        print(f"{name:>8} {c.aten_ops:>9.1f} {c.host_reads:>11.3f} {c.python_calls:>13.1f}")
    extra = collections.Counter(costs["viops"].ops)
    extra.subtract(costs["models"].ops)
    added = sorted(((name, count) for name, count in extra.items() if abs(count) >= 0.05), key=lambda kv: -abs(kv[1]))
    print("aten ops viops' fit adds to the models/ loop: " + ", ".join(f"{name} {count:+.2f}" for name, count in added))
    shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps({"batch_size": args.batch_size, "epochs": args.epochs, "steps_per_epoch": per_pass,
                          "costs": {name: asdict(c) for name, c in costs.items()}}))


if __name__ == "__main__":
    main()
