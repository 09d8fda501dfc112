"""The training step captured as a CUDA graph (``train.cuda_graph``): the same gradients and step scalars as the eager
step on the same minibatch and random draws, for each kind of module, and fits that replay it.

The graph needs a CUDA device, so those tests run where one is present (``make bench-gpu``'s machines). On a CPU,
the tests here check what keeps every model's step capturable: none of its operations reads a value back to the
host.
"""

from __future__ import annotations

import logging
import math

import pytest
import torch

from benchmarks.step_costs import count_ops
from pipelines.build import build_family, build_model
from pipelines.config.loading import load_config, parse_overrides
from pipelines.lifecycle.train import train
from pipelines.training.amortized_module import AmortizedSVIModule
from pipelines.training.data import prepare
from pipelines.training.step_graph import StepGraph, StepGraphs, capture_error
from pipelines.training.svi_module import SVIModule
from tests.conftest import REPO

ZOO = REPO / "configs" / "zoo"
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: a CUDA graph is captured on one")


def test_a_failed_capture_is_reported_by_its_first_error_and_the_line_that_raised_it():
    def captured_step():
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing\nSearch for ...")

    try:
        try:
            captured_step()
        finally:
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture")
    except RuntimeError as error:
        message = capture_error(error)
    assert message.startswith("CUDA error: operation not permitted when stream is capturing (at test_step_graph.py:")
    assert message.endswith(", in captured_step)") and "Search for" not in message


def _module(path, overrides: list[str], rows: int = 3000, features: int = 6, device: str = "cuda",
            classes: int | None = None):
    """The module of the config at ``path`` on ``device`` over random rows (counts for the VAE, class indices with
    ``classes``), as a fit builds it."""
    config = load_config(path, parse_overrides(overrides))
    generator = torch.Generator().manual_seed(0)
    if config.model.kind == "vae":
        x = torch.randint(0, 17, (rows, 64), generator=generator).float()
        y = torch.zeros(rows)
        return AmortizedSVIModule(build_model(config.model, 64, None), config.objective, config.train,
                                  (x, y)).to(device), x.to(device), y.to(device)
    x = torch.randn(rows, features, generator=generator)
    y = x @ torch.randn(features, generator=generator) + 0.3 * torch.randn(rows, generator=generator)
    if classes is not None:
        y = torch.randint(0, classes, (rows,), generator=generator)
    model = build_model(config.model, features, classes)
    family = build_family(config.guide, model.latent_dim, init_loc=model.initial_loc())
    module = SVIModule(model, family, config.train, (x, y)).to(device)
    module.model.to(device)
    return module, x.to(device), y.to(device)


def _eager(module, x, y, clip):
    for _, p in module.trained_parameters():
        p.grad = None
    loss = module._shared_step((x, y), "train")
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_([p for _, p in module.trained_parameters()], clip)
    return loss.detach().clone(), {k: v.clone() for k, v in module.step_stats.items()}, \
        [p.grad.clone() for _, p in module.trained_parameters()]


BLR = REPO / "configs" / "examples" / "blr_csv.yaml"

#: aten operations that read a device value back to the host: a sync per step on a GPU, and an operation a CUDA graph
#: cannot hold (``item``/``float``/``bool`` of a tensor, a linalg result's check, shapes that depend on values).
HOST_READS = {"aten._local_scalar_dense.default", "aten._linalg_check_errors.default", "aten.nonzero.default",
              "aten.masked_select.default", "aten._unique2.default", "aten.unique_consecutive.default",
              "aten.repeat_interleave.Tensor", "aten.equal.default"}
#: Every model of configs/zoo and every family, as ``(config, overrides, classes)``.
STEPS = {
    "blr-mean-field": (BLR, [], None),
    "blr-full-rank": (BLR, ["guide.family=full_rank"], None),
    "blr-low-rank": (BLR, ["guide.family=low_rank", "guide.rank=2"], None),
    "blr-flow": (BLR, ["guide.family=flow"], None),
    "bnn-regression": (ZOO / "bnn_diabetes.yaml", [], None),
    "bnn-classifier": (ZOO / "bnn_breast_cancer.yaml", [], 2),
    "logistic": (ZOO / "logistic_breast_cancer.yaml", [], 2),
    "logistic-low-rank": (ZOO / "logistic_breast_cancer.yaml", ["guide.family=low_rank", "guide.rank=2"], 2),
    "softmax": (ZOO / "softmax_wine.yaml", [], 3),
    "softmax-full-rank": (ZOO / "softmax_wine.yaml", ["guide.family=full_rank"], 3),
    "vae": (ZOO / "vae_digits.yaml", [], None),
}


def test_the_host_read_counter_sees_a_read_and_a_checked_factorisation():
    x = torch.eye(3) + 0.1
    assert HOST_READS & set(count_ops(lambda: float(x.sum())))
    assert "aten._linalg_check_errors.default" in count_ops(lambda: torch.linalg.cholesky(x))
    assert not HOST_READS & set(count_ops(lambda: torch.linalg.cholesky_ex(x)))


@pytest.mark.parametrize("name", sorted(STEPS))
def test_no_training_step_reads_a_value_back_to_the_host(name):
    """On a CPU, what keeps each model's step capturable as a CUDA graph (and free of per-step syncs on a GPU): none
    of its operations, forward or backward, reads a value back to the host. A step that did would still train on a
    GPU, eagerly, after a warning."""
    path, overrides, classes = STEPS[name]
    module, x, y = _module(path, [*overrides, "train.batch_size=64"], rows=256, device="cpu", classes=classes)

    def step():
        for _, p in module.trained_parameters():
            p.grad = None
        module._shared_step((x[:64], y[:64]), "train").backward()

    step()  # first use: lazily built state (priors' constants, caches) is not a per-step cost
    ops = count_ops(step)
    assert ops and not HOST_READS & set(ops), sorted(HOST_READS & set(ops))


@cuda
@pytest.mark.parametrize("path, overrides", [
    (ZOO / "bnn_diabetes.yaml", []),  # local reparameterisation, learned noise
    (ZOO / "bnn_diabetes.yaml", ["train.gradient_clip_val=0.5"]),
    (BLR, ["guide.family=full_rank"]),
    (BLR, ["guide.family=low_rank", "guide.rank=2"]),
    (BLR, ["guide.family=flow"]),
    (ZOO / "vae_digits.yaml", []),
], ids=["bnn", "bnn-clipped", "blr-full-rank", "blr-low-rank", "blr-flow", "vae"])
def test_a_replayed_step_matches_the_eager_step_on_each_minibatch(path, overrides):
    module, x, y = _module(path, [*overrides, "train.batch_size=256"])
    clip = module.settings.gradient_clip_val
    batches = [(x[i:i + 256], y[i:i + 256]) for i in (0, 256, 512)]
    graph = StepGraph(module, *batches[0], clip=clip)
    for seed, (bx, by) in enumerate(batches):  # different rows each time: the graph reads its input buffers
        torch.cuda.manual_seed(seed)
        loss, stats, grads = _eager(module, bx, by, clip)
        torch.cuda.manual_seed(seed)  # the same draws: the graph takes its offsets from the generator at replay
        replayed = graph.step(module, bx, by)
        torch.testing.assert_close(replayed, loss, rtol=1e-5, atol=1e-6)
        for (name_, p), expected in zip(module.trained_parameters(), grads):
            torch.testing.assert_close(p.grad, expected, rtol=1e-5, atol=1e-6, msg=f"gradient of {name_}")
            norm = module.step_stats[f"grad_norm/{name_}"]
            torch.testing.assert_close(norm, torch.linalg.vector_norm(expected), rtol=1e-5, atol=1e-6)
        for key, value in stats.items():
            torch.testing.assert_close(module.step_stats[key], value, rtol=1e-5, atol=1e-5, msg=key)
    assert graph.replays == len(batches)
    first = module.step_stats["elbo"]
    graph.step(module, *batches[1])
    assert module.step_stats["elbo"] is not first and torch.isfinite(first)  # each step's scalars are its own


@cuda
@pytest.mark.parametrize("name, epochs", [("bnn_diabetes", 40), ("vae_digits", 10)])
def test_a_cuda_fit_replays_the_graph_for_every_full_minibatch_and_fits_as_the_eager_step(name, epochs, tracking_uri):
    finals = {}
    for graphed in (True, False):
        config = load_config(ZOO / f"{name}.yaml", parse_overrides([
            f"train.max_epochs={epochs}", "train.accelerator=gpu", "train.devices=1", "registry.auto_register=false",
            f"train.cuda_graph={str(graphed).lower()}", "train.early_stopping.enabled=false"]))
        data = prepare(config.data)
        result = train(config, prepared=data, tracking_uri=tracking_uri, register=False)
        metrics = result.metrics
        rows, batch = data.train_rows, config.train.batch_size
        assert metrics["steps"] == epochs * math.ceil(rows / batch)
        # Every pass's full minibatches are replays; a pass's last, smaller one runs eagerly (MAX_STEP_GRAPHS).
        assert metrics["graphed_steps"] == (epochs * (rows // batch) if graphed else 0)
        finals[graphed] = metrics["validation_elbo_per_datum"]
    # Different draws (the capture's warm-up passes take some), the same optimisation: the fits end close together.
    assert finals[True] == pytest.approx(finals[False], rel=0.1), finals


@cuda
def test_a_step_that_cannot_be_captured_runs_eagerly_and_leaves_the_stream_and_random_draws_as_they_were(caplog):
    module, x, y = _module(ZOO / "bnn_diabetes.yaml", ["train.batch_size=256"])
    shared_step = module._shared_step

    def reads_back(batch, stage):
        loss = shared_step(batch, stage)
        float(loss)  # a host read: not allowed while a stream is being captured
        return loss

    module._shared_step = reads_back
    graphs = StepGraphs(enabled=True)
    stream = torch.cuda.current_stream()
    with caplog.at_level(logging.WARNING, logger="pipelines.training.step_graph"):
        assert graphs.for_minibatch(module, (x[:256], y[:256])) is None
    assert not graphs.enabled and "could not be captured as a CUDA graph" in caplog.text
    assert "(at test_step_graph.py:" in caplog.text and "in reads_back)" in caplog.text  # where the host read is
    assert torch.cuda.current_stream() == stream
    torch.cuda.manual_seed(3)
    first = torch.randn(4, device="cuda")
    torch.cuda.manual_seed(3)
    torch.testing.assert_close(torch.randn(4, device="cuda"), first)  # the generator is out of capture mode
    module._shared_step((x[:256], y[:256]), "train").backward()  # and an eager step runs
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for _, p in module.trained_parameters())
