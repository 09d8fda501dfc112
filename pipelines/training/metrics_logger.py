"""Lightning's MLflow logger for a run that viops opened and will close, with the metrics it logs during the fit
sent through the run's telemetry sink.

Lightning's :class:`~pytorch_lightning.loggers.MLFlowLogger` writes each ``log_metrics`` call (every validation, every
amortization-gap measurement) with one synchronous ``log_batch`` request, which the training step waits for. Sent
through the sink instead, they are written by the same writer as the step metrics, off the training thread, with
the same outage handling: what cannot be delivered is spooled and replayed by ``--resume``, and the fit's
``sink.close()`` waits until everything is delivered.

It would also read the run back when the fit starts, and mark it FINISHED (or FAILED) when the fit ends: the run is
:mod:`pipelines.training.run`'s, which ends it only once the final metrics and the model are logged, so neither
request is made.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from pytorch_lightning.loggers import MLFlowLogger
from pytorch_lightning.loggers.logger import rank_zero_experiment
from pytorch_lightning.utilities import rank_zero_only

__all__ = ["RunLogger", "SinkLogger", "fit_logger"]


class RunLogger(MLFlowLogger):
    """An :class:`MLFlowLogger` on an open run (``run_id``) that leaves the run's status to its owner."""

    @property
    @rank_zero_experiment
    def experiment(self):
        """The MLflow client (a stand-in on ranks other than 0, as in Lightning's), without Lightning's ``get_run``
        and its global ``mlflow.set_tracking_uri``."""
        self._initialized = True
        return self._mlflow_client

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:  # asked for only where a path is named after it
            self._experiment_id = self._mlflow_client.get_run(self._run_id).info.experiment_id
        return self._experiment_id

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        """Nothing to do: Lightning's would mark the run terminated while viops still logs to it."""


class SinkLogger(RunLogger):
    """A :class:`RunLogger` whose ``log_metrics`` hands one row to ``sink`` (``sink(names, rows)``, as
    :class:`pipelines.training.callbacks.StepTelemetry` calls it)."""

    def __init__(self, sink: Callable[[list[str], list], None], **kwargs):
        super().__init__(**kwargs)
        self._sink = sink

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        names = [name for name, value in metrics.items() if not isinstance(value, str)]
        self._sink(names, [(step or 0, int(time.time() * 1000), [float(metrics[name]) for name in names])])


def fit_logger(sink, experiment_name: str, tracking_uri: str, run_id: str) -> RunLogger:
    """The fit's logger: through ``sink`` when it delivers metrics, else (step metrics off) Lightning's own
    requests."""
    from pipelines.training.telemetry import NullSink

    if isinstance(sink, NullSink):
        return RunLogger(experiment_name=experiment_name, tracking_uri=tracking_uri, run_id=run_id)
    return SinkLogger(sink, experiment_name=experiment_name, tracking_uri=tracking_uri, run_id=run_id)
