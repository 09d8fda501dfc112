"""One SVI step's forward and backward passes captured as a CUDA graph (``train.cuda_graph``).

At the networks' sizes viops trains, an eager GPU step is bound by the host: a BNN step at batch 4,096 holds ~0.3 ms
of GPU work behind ~150 kernel launches of ~9 µs each (docs/benchmarks.md#gpu-make-bench-gpu). PyTorch's
whole-network recipe (``torch.cuda.graph``) records those launches once and replays them as one. Here the graph holds
the ELBO's forward pass, its backward pass, gradient clipping, every trained parameter's gradient norm and the step's
scalars; the callbacks and the optimiser step still run eagerly after each replay, so they see what they see in an
eager step: this step's gradients and step scalars, and the parameters before the update.
"""

from __future__ import annotations

import logging
import traceback
from pathlib import Path

import torch

from pipelines.training.callbacks import gradient_norms

__all__ = ["MAX_STEP_GRAPHS", "StepGraph", "StepGraphs", "WARMUP_STEPS", "capture_error"]

log = logging.getLogger(__name__)

#: Eager passes on a side stream before the capture (cuBLAS handles and workspaces, autograd's engine, the allocator),
#: as ``torch.cuda.graph``'s documentation asks. Their gradients are discarded and no optimiser step is taken.
WARMUP_STEPS = 3

#: Minibatch shapes a fit captures a graph for, in the order they come: the full minibatch. Steps of other shapes (the
#: smaller minibatch that ends each pass over a table) run eagerly. Each graph holds its own activations and
#: gradients on the device.
MAX_STEP_GRAPHS = 1


class StepGraph:
    """A module's training step, captured for minibatches of the shape of ``(x, y)``.

    ``module`` is a :class:`~pipelines.training.svi_module.MinibatchSVI` on a CUDA device whose
    ``_shared_step(batch, "train")`` leaves the step's scalars (0-d tensors) in ``module.step_stats``. The graph reads
    its input from static buffers, so :meth:`step` copies each minibatch into them; after :meth:`step` the trained
    parameters' ``.grad`` are the graph's gradient buffers, holding this step's gradients.

    Args:
        module: the LightningModule whose step is captured.
        x, y: a minibatch of the shape every replayed minibatch will have.
        clip: ``train.gradient_clip_val`` (clip by the total norm), or None.
    """

    def __init__(self, module, x: torch.Tensor, y: torch.Tensor, clip: float | None = None):
        named = list(module.trained_parameters())
        self.parameters = [p for _, p in named]
        self.norm_names = [f"grad_norm/{name}" for name, _ in named]
        self.clip = clip
        self.x, self.y = x.clone(), y.clone()
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                self._clear_grads()
                self._body(module)
        stream = torch.cuda.current_stream(x.device)
        stream.wait_stream(side)
        self._clear_grads()
        generator = torch.cuda.default_generators[x.device.index if x.device.index is not None
                                                  else torch.cuda.current_device()]
        state = generator.clone_state()
        self.graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(self.graph):
                self.names, self.values = self._body(module)
        except RuntimeError:
            # A capture that fails (an operation a graph cannot hold, such as a host read) leaves the capture's
            # stream current and the default generator in capture mode, where every later random draw raises:
            # restore both, so that the caller can go on eagerly.
            torch.cuda.set_stream(stream)
            generator.graphsafe_set_state(state)
            self._clear_grads()
            raise
        self.grads = [p.grad for p in self.parameters]
        self.replays = 0

    def _clear_grads(self) -> None:
        for parameter in self.parameters:
            parameter.grad = None

    def _body(self, module) -> tuple[list[str], torch.Tensor]:
        """The captured work: loss, gradients, clipping, then every scalar stacked in one vector (the loss last)."""
        loss = module._shared_step((self.x, self.y), "train")
        loss.backward()
        if self.clip is not None:
            torch.nn.utils.clip_grad_norm_(self.parameters, self.clip)
        stats = {**module.step_stats, **gradient_norms(self.norm_names, self.parameters)}
        values = torch.stack([*(value.reshape(()) for value in stats.values()), loss.detach().reshape(())])
        return list(stats), values

    def step(self, module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Run the captured step on ``(x, y)``: set ``module.step_stats`` (this step's own tensors, which later
        replays do not overwrite) and the parameters' gradients; return the loss."""
        self.x.copy_(x)
        self.y.copy_(y)
        for parameter, grad in zip(self.parameters, self.grads):  # an eager step in between may have replaced them
            parameter.grad = grad
        self.graph.replay()
        self.replays += 1
        values = self.values.clone().unbind()  # one copy: telemetry keeps the step's scalars until its flush
        module._set_step_stats(dict(zip(self.names, values)))
        return values[-1]


class StepGraphs:
    """A fit's captured steps, one per minibatch shape for the first :data:`MAX_STEP_GRAPHS` shapes, each captured
    when its shape first comes; a step of another shape runs eagerly. A step that cannot be captured turns capturing
    off, and says so once.

    Args:
        enabled: whether to capture (``train.cuda_graph`` on one CUDA device at full precision, and a module whose
            step does the same device work every time).
    """

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.graphs: dict[tuple, StepGraph] = {}

    def for_minibatch(self, module, minibatch) -> StepGraph | None:
        """The captured step for ``minibatch``'s shape, captured now if it is new; None where the step runs eagerly."""
        x, y = minibatch
        key = (x.shape, y.shape)
        graph = self.graphs.get(key)
        if graph is None and len(self.graphs) < MAX_STEP_GRAPHS:
            try:
                graph = self.graphs[key] = StepGraph(module, x, y, clip=module.settings.gradient_clip_val)
            except RuntimeError as error:  # an operation that cannot be captured (a host read in the model's step)
                self.enabled = False
                log.warning("train.cuda_graph: the training step could not be captured as a CUDA graph, so it runs "
                            "eagerly (set train.cuda_graph: false to skip the attempt): %s", capture_error(error))
        return graph

    def release(self, module) -> int:
        """Free the graphs (each graph's memory pool, which holds the gradients too); return their replays."""
        replays = sum(graph.replays for graph in self.graphs.values())
        if self.graphs:
            self.graphs = {}
            for _, parameter in module.trained_parameters():
                parameter.grad = None
        return replays


def capture_error(error: BaseException) -> str:
    """What stopped a capture, and where: the first error of the chain (the ones after it only say that the capture
    failed), its first line and the line of code that raised it."""
    while error.__context__ is not None:
        error = error.__context__
    lines = str(error).strip().splitlines()
    frames = traceback.extract_tb(error.__traceback__)
    where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno}, in {frames[-1].name})" if frames else ""
    return (lines[0] if lines else type(error).__name__) + where
