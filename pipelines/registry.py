"""MLflow model registry: register a finished training run and set the ``challenger``/``champion`` aliases.

Registration is idempotent per run: registering the same run twice (an Airflow retry, say) returns the version that
already exists instead of creating a second one. Only runs that FINISHED and logged a model are registered.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

__all__ = ["Registration", "RegistryError", "register_run", "CHAMPION", "CHALLENGER"]

CHAMPION = "champion"
CHALLENGER = "challenger"
MODEL_ID_TAG = "viops.model_id"


class RegistryError(RuntimeError):
    """The run cannot be registered; the message says why."""


@dataclass(frozen=True)
class Registration:
    """Outcome of registering a run.

    Attributes:
        model_name: registered model name.
        version: the version created for (or already holding) the run.
        aliases: aliases now pointing at that version.
        created: False when the run was already registered and nothing changed.
        reason: a sentence saying what was done and why.
    """

    model_name: str
    version: str
    aliases: tuple[str, ...]
    created: bool
    reason: str


def _existing_version(client: MlflowClient, model_name: str, run_id: str):
    try:
        versions = client.search_model_versions(f"name='{model_name}' and run_id='{run_id}'")
    except MlflowException:
        return None
    if not versions:
        return None
    first = min(versions, key=lambda v: int(v.version))
    return client.get_model_version(model_name, first.version)  # search results carry no aliases


def _has_alias(client: MlflowClient, model_name: str, alias: str) -> bool:
    try:
        client.get_model_version_by_alias(model_name, alias)
        return True
    except MlflowException:
        return False


def register_run(client: MlflowClient, run_id: str, model_name: str, tags: dict[str, str] | None = None) -> Registration:
    """Register the model logged by ``run_id`` as a new version of ``model_name``.

    The new version gets alias ``challenger``; when the model has no ``champion`` yet it becomes champion too.

    Raises:
        RegistryError: the run did not finish successfully or logged no model.
    """
    run = client.get_run(run_id)
    existing = _existing_version(client, model_name, run_id)
    if existing is not None:
        aliases = tuple(existing.aliases)
        return Registration(
            model_name, existing.version, aliases, False, f"run {run_id} is already version {existing.version}"
        )
    if run.info.status not in ("FINISHED", "RUNNING"):
        raise RegistryError(f"run {run_id} has status {run.info.status}; only successful runs are registered")
    model_id = run.data.tags.get(MODEL_ID_TAG)
    if not model_id:
        raise RegistryError(f"run {run_id} logged no model (tag {MODEL_ID_TAG} missing); nothing to register")
    try:
        client.get_registered_model(model_name)
    except MlflowException:
        client.create_registered_model(model_name, description="Trained by viops (minibatch SVI).")
    version = client.create_model_version(
        model_name, source=f"models:/{model_id}", run_id=run_id, tags=tags or {}, model_id=model_id
    )
    aliases = [CHALLENGER]
    client.set_registered_model_alias(model_name, CHALLENGER, version.version)
    reason = f"version {version.version} registered from run {run_id} as {CHALLENGER}"
    if not _has_alias(client, model_name, CHAMPION):
        client.set_registered_model_alias(model_name, CHAMPION, version.version)
        client.set_model_version_tag(model_name, version.version, "viops.promotion_reason", "first model: no champion")
        aliases.append(CHAMPION)
        reason += f"; it is also {CHAMPION} because the model had none"
    return Registration(model_name, version.version, tuple(aliases), True, reason)
