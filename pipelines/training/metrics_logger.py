"""Lightning's MLflow logger, with the metrics it logs during the fit sent through the run's telemetry sink.

Lightning's :class:`~pytorch_lightning.loggers.MLFlowLogger` writes each ``log_metrics`` call (every validation, every
amortization-gap measurement) with one synchronous ``log_batch`` request, which the training step waits for. Sent
through the sink instead, they are written by the same writer as the step metrics, off the training thread, with
the same outage handling: what cannot be delivered is spooled and replayed by ``--resume``, and the fit's
``sink.close()`` waits until everything is delivered.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from pytorch_lightning.loggers import MLFlowLogger
from pytorch_lightning.utilities import rank_zero_only

__all__ = ["SinkLogger", "fit_logger"]


class SinkLogger(MLFlowLogger):
    """An :class:`MLFlowLogger` whose ``log_metrics`` hands one row to ``sink`` (``sink(names, rows)``, as
    :class:`pipelines.training.callbacks.StepTelemetry` calls it); everything else is Lightning's."""

    def __init__(self, sink: Callable[[list[str], list], None], **kwargs):
        super().__init__(**kwargs)
        self._sink = sink

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        names = [name for name, value in metrics.items() if not isinstance(value, str)]
        self._sink(names, [(step or 0, int(time.time() * 1000), [float(metrics[name]) for name in names])])


def fit_logger(sink, experiment_name: str, tracking_uri: str, run_id: str) -> MLFlowLogger:
    """The fit's logger: through ``sink`` when it delivers metrics, else (step metrics off) Lightning's own."""
    from pipelines.training.telemetry import NullSink

    if isinstance(sink, NullSink):
        return MLFlowLogger(experiment_name=experiment_name, tracking_uri=tracking_uri, run_id=run_id)
    return SinkLogger(sink, experiment_name=experiment_name, tracking_uri=tracking_uri, run_id=run_id)
