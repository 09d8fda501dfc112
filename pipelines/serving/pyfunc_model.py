"""MLflow "models from code" entry point: defines the logged pyfunc without pickling a Python object.

MLflow copies this file into the model and runs it at load time; ``models/`` and ``pipelines/`` travel with the model
as ``code_paths``, so the import below resolves wherever the model is loaded or served.
"""

import mlflow

from pipelines.serving.pyfunc import PosteriorPredictiveModel

mlflow.models.set_model(PosteriorPredictiveModel())
