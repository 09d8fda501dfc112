"""The MLflow tracking URI every command uses: explicit, else ``$MLFLOW_TRACKING_URI``, else local SQLite.

It is always passed explicitly to MLflow and Lightning (whose logger would otherwise fall back to ``./mlruns``).
"""

from __future__ import annotations

import os

__all__ = ["DEFAULT_TRACKING_URI", "resolve_tracking_uri"]

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def resolve_tracking_uri(explicit: str | None = None) -> str:
    """The tracking URI: explicit argument, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` here."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
