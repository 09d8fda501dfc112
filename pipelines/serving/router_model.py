"""MLflow "models from code" entry point of the canary router (:class:`~pipelines.serving.routing.CanaryRouter`)."""

import mlflow

from pipelines.serving.routing import CanaryRouter

mlflow.models.set_model(CanaryRouter())
