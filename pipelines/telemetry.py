"""Batched, non-blocking delivery of per-step training metrics to MLflow.

One synchronous tracking request costs milliseconds, so steps are sent in batches of up to 1,000 metric values per
``log_batch`` request, from a background thread; :meth:`MlflowMetricSink.close` waits for delivery and re-raises
the first error.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

from mlflow import MlflowClient
from mlflow.entities import Metric

__all__ = ["MlflowMetricSink"]

MAX_METRICS_PER_REQUEST = 1000


class MlflowMetricSink:
    """Callable sink for :class:`pipelines.callbacks.StepTelemetry`, writing to one MLflow run."""

    def __init__(self, client: MlflowClient, run_id: str):
        self.client, self.run_id = client, run_id
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="viops-telemetry")
        self._pending: list[Future] = []

    def __call__(self, names: list[str], rows: list) -> None:
        self._pending.append(self._executor.submit(self._send, names, rows))

    def _send(self, names: list[str], rows: list) -> None:
        metrics = [
            Metric(key=name, value=float(value), timestamp=ts, step=step)
            for step, ts, values in rows
            for name, value in zip(names, values)
        ]
        for start in range(0, len(metrics), MAX_METRICS_PER_REQUEST):
            self.client.log_batch(self.run_id, metrics=metrics[start : start + MAX_METRICS_PER_REQUEST])

    def close(self) -> None:
        """Wait until every batch is delivered; raise the first delivery error, if any."""
        try:
            for future in self._pending:
                future.result()
        finally:
            self._pending.clear()
            self._executor.shutdown(wait=True)
