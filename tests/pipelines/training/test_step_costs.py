"""What viops' fit adds to each SVI step, counted (benchmarks/step_costs.py): no value read back to the host per step,
and a handful of aten operations over the bare ``models/`` loop. Counts do not depend on the machine's speed, so
these catch a per-step ``.item()`` or a rebuilt distribution that a timed benchmark would lose in its noise."""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks.bench_blr_training import over_models
from benchmarks.step_costs import count_ops, count_python, per_step
from pipelines.config.loading import load_config
from pipelines.lifecycle.train import train
from pipelines.training.data import prepare

#: The fit's own aten operations a step beyond the bare loop's: the step's scalars kept for telemetry (three
#: detaches), the gradient norms (one fused norm) and the Laplace preconditioner's map and its backward (four).
FIT_OPS_OVER_MODELS = 8.5


def test_the_counters_see_operations_host_reads_and_python_calls():
    x = torch.ones(3, requires_grad=True)
    ops = count_ops(lambda: (x * 2).sum().backward())
    assert ops["aten.mul.Tensor"] >= 1 and ops["aten.sum.default"] == 1
    calls = count_python(lambda: [float(x.sum()), x.detach().tolist(), x.detach().numpy(), x.cpu()])
    assert calls["tolist"] == calls["numpy"] == calls["cpu"] == 1 and calls["python"] >= 1

    def loop(n: int) -> None:  # each step: one host read, two aten operations, one call of `step`
        for _ in range(n):
            step(x)

    def step(t):
        return float(t.sum())
    costs = per_step(loop, 10, 30)
    assert costs.host_reads == 1.0 and costs.aten_ops == 2.0 and costs.python_calls == 1.0
    with pytest.raises(ValueError, match="more steps"):
        per_step(loop, 10, 10)


def test_a_fit_reads_nothing_back_per_step_and_adds_few_operations_to_the_models_loop(example_dir, tracking_uri):
    # On the CPU wherever the suite runs: on a CUDA device the step is replayed as a graph, whose operations are not
    # dispatched one by one (tests/pipelines/training/test_step_graph.py covers that step).
    configs = {epochs: load_config(example_dir / "blr_csv.yaml", {
        "train.max_epochs": epochs, "train.early_stopping.enabled": False, "registry.auto_register": False,
        "train.accelerator": "cpu"}) for epochs in (4, 8)}
    data = prepare(configs[4].data)
    per_pass = math.ceil(data.train_rows / configs[4].train.batch_size)
    steps = lambda epochs: epochs * per_pass  # noqa: E731
    fit = per_step(lambda epochs: train(configs[epochs], prepared=data, tracking_uri=tracking_uri, register=False),
                   4, 8, steps=steps)
    bare = per_step(lambda epochs: over_models(configs[4], data, steps(epochs)), 4, 8, steps=steps)
    # The NaN guard reads every 50 steps (one read for all the step's scalars); telemetry reads once per flush.
    assert fit.host_reads < 0.1, fit.ops
    assert bare.aten_ops < fit.aten_ops <= bare.aten_ops + FIT_OPS_OVER_MODELS, (fit.ops, bare.ops)
    assert fit.ops.get("aten._foreach_norm.Scalar") == 1.0  # the gradient norms: one fused kernel a step
