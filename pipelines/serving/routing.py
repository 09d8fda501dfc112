"""Canary routing: a deterministic, sticky share of rows answered by the candidate instead of the champion.

A row's share ``u`` in ``[0, 1)`` is a 64-bit hash of its key (the ``key_column`` value, else the row's index
label) divided by ``2**64``; the candidate answers the rows with ``u < fraction``. The same key always lands on the
same version, in ``viops score``, in the served model and in the monitor's canary slice, and a row routed to the
candidate at 10% stays with it at 50% (the ramp only adds rows).

:class:`CanaryRouter` is the pyfunc ``mlflow models serve`` runs during a canary: it loads both versions' posteriors
and returns each row's predictions with a ``version`` column saying which version answered.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import mlflow.pyfunc
import numpy as np
import pandas as pd

from pipelines.serving.pyfunc import PYFUNC_CODE, BadModelInput, PosteriorPredictiveModel

__all__ = ["row_share", "route", "CanaryRouter", "ROUTER_ENTRY_POINT", "ROUTER_CODE", "VERSION_COLUMN"]

#: The hash key of the routing (16 bytes, as pandas requires). Changing it reshuffles every row: never do that
#: during a canary.
HASH_KEY = "viops-canary-v1!"
VERSION_COLUMN = "version"
#: The "models from code" file that defines the served router.
ROUTER_ENTRY_POINT = Path(__file__).with_name("router_model.py")
#: What the saved router needs at load time: what a version's pyfunc needs, and this module.
ROUTER_CODE = (*PYFUNC_CODE, "pipelines/serving/routing.py")


def row_share(keys: pd.Series) -> np.ndarray:
    """Each key's place in ``[0, 1)``: a stable 64-bit hash of its text, over ``2**64``."""
    hashed = pd.util.hash_pandas_object(keys.astype(str), index=False, hash_key=HASH_KEY)
    return hashed.to_numpy(dtype=np.uint64).astype(np.float64) / 2.0**64


def route(frame: pd.DataFrame, fraction: float, key_column: str | None = None) -> np.ndarray:
    """True for the rows the candidate answers at ``fraction``.

    Raises:
        BadModelInput: ``key_column`` is set but not in ``frame``.
    """
    if key_column is None:
        keys = pd.Series(frame.index, index=frame.index)
    elif key_column not in frame.columns:
        raise BadModelInput(f"input has no routing key column {key_column!r}: the canary routes rows by it "
                            f"(deploy.key_column)")
    else:
        keys = frame[key_column]
    return row_share(keys) < fraction


class CanaryRouter(mlflow.pyfunc.PythonModel):
    """``predict(rows)``: the champion's or the candidate's predictions per row, as :func:`route` sends it, plus a
    ``version`` column naming the version that answered."""

    @classmethod
    def of(cls, spec: dict, champion, candidate) -> CanaryRouter:
        """A router over two predictors already loaded (:class:`PosteriorPredictiveModel`), for in-process scoring."""
        router = cls()
        router.spec, router.versions = spec, {"champion": champion, "candidate": candidate}
        return router

    def load_context(self, context) -> None:
        self.spec = json.loads(Path(context.artifacts["routing"]).read_text())
        self.versions = {}
        for role in ("champion", "candidate"):
            predictor = PosteriorPredictiveModel()
            predictor.load_context(SimpleNamespace(artifacts={"posterior": context.artifacts[role]}))
            self.versions[role] = predictor

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        spec = self.spec
        to_candidate = route(model_input, spec["fraction"], spec.get("key_column"))
        parts, positions = [], []
        for role, rows in (("champion", ~to_candidate), ("candidate", to_candidate)):
            if rows.any():
                answered = self.versions[role].predict(context, model_input[rows], params)
                answered[VERSION_COLUMN] = str(spec[role])
                parts.append(answered)
                positions.append(np.flatnonzero(rows))
        if not parts:
            return pd.DataFrame(index=model_input.index)
        return pd.concat(parts).iloc[np.argsort(np.concatenate(positions), kind="stable")]  # the input's order
