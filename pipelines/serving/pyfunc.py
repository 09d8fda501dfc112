"""The MLflow pyfunc flavour of a trained viops model: its posterior predictive with uncertainty.

Regression models return the predictive mean, SD and 5%/95% quantiles on the original target scale; classifiers
return the probability of every class (``p_0 ... p_{C-1}``), the most probable class, the predictive entropy and its
epistemic part (the mutual information between the prediction and the weights), all in nats. An amortized model (the
VAE) returns each row's approximate posterior ``q(z | x)`` (``z_mean_<d>``, ``z_sd_<d>``) and ``log_marginal``, an
IWAE estimate of ``log p(x)`` (low values: rows unlike the training data).

The artifact ``posterior.pt`` holds the model and guide config, the variational parameters, the feature order and the
standardisation of the training data, so that ``mlflow.pyfunc.load_model`` (and ``mlflow models serve``) rebuilds
the exact posterior. Predictions are reproducible: draws use a seeded generator.

``predict`` takes the params ``num_samples``, ``seed`` and ``device`` (``"cpu"``, the default, or ``"cuda"`` /
``"cuda:<index>"``: the draws and the network run on that GPU; the same seed draws other numbers there than on the
CPU, since the two devices' generators differ).
"""

from __future__ import annotations

from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from pipelines.serving.bundle import PosteriorBundle

__all__ = ["PosteriorPredictiveModel", "PREDICTION_COLUMNS", "scoring_device", "class_columns", "PYFUNC_ENTRY_POINT",
           "PYFUNC_CODE", "stage_pyfunc_code", "pip_requirements", "BadModelInput"]


class BadModelInput(MlflowException, ValueError):
    """The request's rows cannot be scored (a missing feature column, a NaN/inf value); the message says where.

    An ``MlflowException`` with ``INVALID_PARAMETER_VALUE``, so that ``mlflow models serve`` answers HTTP 400 with
    this message (any other exception is a 500 "unexpected error"), and a ``ValueError`` for in-process callers."""

    def __init__(self, message: str):
        MlflowException.__init__(self, message, error_code=INVALID_PARAMETER_VALUE)

PREDICTION_COLUMNS = ("mean", "sd", "q05", "q95")


def scoring_device(name: str | None) -> torch.device:
    """The device ``predict`` runs on: ``"cpu"`` (``None`` too), ``"cuda"`` or ``"cuda:<index>"`` of a GPU this
    process sees.

    Raises:
        BadModelInput: any other name, or a GPU that is not there.
    """
    try:
        device = torch.device(name or "cpu")
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise BadModelInput(f"device {name!r}: expected 'cpu', 'cuda' or 'cuda:<index>'")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise BadModelInput(f"device {name!r}: this process sees {count} CUDA device(s); score with 'cpu'")
    return device


_REPO = Path(__file__).resolve().parents[2]
#: The "models from code" file MLflow runs to define the logged model.
PYFUNC_ENTRY_POINT = Path(__file__).with_name("pyfunc_model.py")
#: What the logged model needs at load time, relative to the repository: the pure-PyTorch models, the config
#: schema, the builder of models and families from it, and this package's bundle and predictor. Nothing else
#: of pipelines/ travels with a model.
PYFUNC_CODE = (
    "models",
    "pipelines/__init__.py",
    "pipelines/build.py",
    "pipelines/config",
    "pipelines/errors.py",
    "pipelines/serving/__init__.py",
    "pipelines/serving/bundle.py",
    "pipelines/serving/pyfunc.py",
)


def stage_pyfunc_code(directory: Path, files: tuple[str, ...] = PYFUNC_CODE) -> list[str]:
    """Copy ``files`` (default :data:`PYFUNC_CODE`) under ``directory``; the top-level folders for ``code_paths``."""
    import shutil

    for relative in files:
        source, target = _REPO / relative, directory / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    return sorted(str(directory / top) for top in {relative.split("/")[0] for relative in files})


def pip_requirements() -> list[str]:
    """The distributions a logged model needs, pinned to this environment's versions.

    Passed to every ``log_model``/``save_model``: without it MLflow infers them by loading the model in a child
    process (several seconds per model) and may pick up whatever else the environment holds."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("torch", "mlflow", "pandas", "numpy", "pydantic", "PyYAML")]


def class_columns(num_classes: int) -> list[str]:
    """Output columns of a classifier's pyfunc, in order."""
    return [*(f"p_{c}" for c in range(num_classes)), "predicted_class", "entropy", "mutual_information"]


class PosteriorPredictiveModel(mlflow.pyfunc.PythonModel):
    """``predict(DataFrame of features)``: ``DataFrame[mean, sd, q05, q95]`` on the original target scale
    (regression), or ``DataFrame[p_0..p_{C-1}, predicted_class, entropy, mutual_information]`` (classification)."""

    def load_context(self, context) -> None:
        self.bundle = PosteriorBundle.load(context.artifacts["posterior"])
        self.model, self.family = self.bundle.rebuild()

    def _on(self, device: torch.device):
        """``(model, family)`` on ``device``: the loaded ones on the CPU, else copies moved there once and kept."""
        if device.type == "cpu":
            return self.model, self.family
        placed = self.__dict__.setdefault("_placed", {})
        if device not in placed:
            import copy

            placed[device] = tuple(None if m is None else copy.deepcopy(m).to(device)
                                   for m in (self.model, self.family))
        return placed[device]

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from models.predictive import posterior_predictive

        b = self.bundle
        missing = [c for c in b.features if c not in model_input.columns]
        if missing:
            raise BadModelInput(f"input is missing feature column(s) {missing}; the model expects {b.features}")
        x = model_input[b.features].to_numpy(dtype=np.float32)
        if not np.isfinite(x).all():
            rows, cols = np.nonzero(~np.isfinite(x))
            raise BadModelInput(f"input has {len(rows)} NaN/inf value(s), first in column {b.features[cols[0]]!r} "
                                f"at row {rows[0]}; every feature must be a finite number")
        if b.feature_mean:
            x = (x - np.asarray(b.feature_mean, dtype=np.float32)) / np.asarray(b.feature_scale, dtype=np.float32)
        num_samples = int((params or {}).get("num_samples", b.predictive_samples))
        device = scoring_device((params or {}).get("device"))
        generator = torch.Generator(device=device).manual_seed(int((params or {}).get("seed", b.seed)))
        model, family = self._on(device)
        rows = torch.from_numpy(x).to(device)
        if family is None:
            return self._encode(model, rows, num_samples, generator, model_input.index)
        if b.num_classes is not None:
            return self._classify(model, family, rows, num_samples, generator, model_input.index)
        summary = posterior_predictive(model, family, rows, num_samples=num_samples, generator=generator)
        columns = [summary.mean, summary.sd, summary.quantiles[0.05], summary.quantiles[0.95]]
        out = {name: col.cpu().numpy().astype(np.float64) for name, col in zip(PREDICTION_COLUMNS, columns)}
        for name in ("mean", "q05", "q95"):
            out[name] = out[name] * b.target_scale + b.target_mean
        out["sd"] = out["sd"] * b.target_scale
        return pd.DataFrame(out, index=model_input.index)

    @staticmethod
    def _classify(model, family, x: torch.Tensor, num_samples: int, generator: torch.Generator, index
                  ) -> pd.DataFrame:
        from models.predictive import class_predictive

        result = class_predictive(model, family, x, num_samples=num_samples, generator=generator)
        probs = result.probs.cpu().numpy().astype(np.float64)
        out = {f"p_{c}": probs[:, c] for c in range(probs.shape[1])}
        out["predicted_class"] = probs.argmax(1).astype(np.int64)
        out["entropy"] = result.entropy.cpu().numpy().astype(np.float64)
        out["mutual_information"] = result.mutual_information.cpu().numpy().astype(np.float64)
        return pd.DataFrame(out, index=index)

    @staticmethod
    def _encode(model, x: torch.Tensor, num_samples: int, generator: torch.Generator, index) -> pd.DataFrame:
        from models.amortized import iwae_bound

        with torch.no_grad():
            q = model.encode(x)
            log_marginal = iwae_bound(model, x, num_samples, q=q, generator=generator)
            loc, scale = q.loc.cpu(), q.scale.cpu()
        out = {f"z_mean_{d}": loc[:, d].numpy().astype(np.float64) for d in range(loc.shape[1])}
        out.update({f"z_sd_{d}": scale[:, d].numpy().astype(np.float64) for d in range(loc.shape[1])})
        out["log_marginal"] = log_marginal.cpu().numpy().astype(np.float64)
        return pd.DataFrame(out, index=index)
