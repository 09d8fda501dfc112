"""A registered version loaded for prediction: its pyfunc (as ``mlflow models serve`` runs it) and the viops
predictor inside, resolved through the client's own registry.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass

from pipelines.registry.versions import CHAMPION, parse_model_ref, resolve_version

__all__ = ["LoadedVersion", "load_version", "load_ref"]


@dataclass
class LoadedVersion:
    """A registered version loaded for prediction.

    Attributes:
        pyfunc: the MLflow pyfunc model (signature enforcement included), as ``mlflow models serve`` runs it.
        predictor: the viops predictor inside it: ``bundle`` (features, target, standardisation), ``model``, ``family``.
    """

    name: str
    version: str
    run_id: str
    aliases: tuple[str, ...]
    pyfunc: object
    predictor: object

    @property
    def bundle(self):
        return self.predictor.bundle

    @property
    def ref(self) -> str:
        return f"{self.name}/{self.version}"


def load_version(client, model_name: str, selector: str | None = None, *, tracking_uri: str) -> LoadedVersion:
    """Download and load a version (``selector``: a number or ``@alias``; default ``@champion``).

    Raises:
        RegistryError: no such model, version or alias.
    """
    import mlflow

    version = resolve_version(client, model_name, selector or f"@{CHAMPION}")
    # Resolve the version's storage location with this client: MLflow's own models:/ resolution consults the
    # process-global registry URI, which may point at another store.
    source = client.get_model_version_download_uri(model_name, str(version.version))
    local = mlflow.artifacts.download_artifacts(artifact_uri=source, tracking_uri=tracking_uri,
                                                dst_path=tempfile.mkdtemp(prefix="viops-model-"))
    pyfunc = mlflow.pyfunc.load_model(local)
    return LoadedVersion(model_name, str(version.version), version.run_id, tuple(version.aliases), pyfunc,
                         pyfunc.unwrap_python_model())


def load_ref(client, ref: str, *, tracking_uri: str) -> LoadedVersion:
    """Load ``NAME``, ``NAME@alias`` or ``NAME/version`` (``NAME`` alone means its champion)."""
    name, selector = parse_model_ref(ref)
    return load_version(client, name, selector, tracking_uri=tracking_uri)
