"""MLflow model registry versions: register a training run as ``challenger``; find versions by number or alias.

Registration is idempotent per run: registering the same run twice (an Airflow retry, say) returns the version that
already exists instead of creating a second one. Only runs that FINISHED and logged a model are registered, and the
version carries the run's data fingerprint and config hash. Moving ``champion`` is :mod:`pipelines.registry.promotion`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pipelines.errors import NotRetryable
from pipelines.registry.signing import SIGNATURE_TAG, sign_run_model
from pipelines.run_artifacts import MODEL_ID_TAG
from pipelines.tracking import process_tracking_uri

__all__ = [
    "Registration",
    "RegistryError",
    "register_run",
    "parse_model_ref",
    "alias_version",
    "resolve_version",
    "gate_verdict",
    "CHAMPION",
    "CHALLENGER",
    "PREVIOUS_CHAMPION",
    "VERSION_TAGS_FROM_RUN",
]

CHAMPION = "champion"


CHALLENGER = "challenger"


PREVIOUS_CHAMPION = "previous-champion"
#: Run tags copied onto the version registered from the run.
VERSION_TAGS_FROM_RUN = ("viops.data_fingerprint", "viops.config_hash")




class RegistryError(RuntimeError, NotRetryable):
    """A registry request cannot be carried out (unknown model or version, a run that cannot be registered, ...);
    the message says why. Nothing was changed."""


#: What the registry answers for a model, version or alias that does not exist (an alias lookup says "invalid
#: parameter"). Any other failure (the server unreachable, a database error) is not taken for "not found".
_MISSING = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


def _missing(exc: MlflowException) -> bool:
    """True when the registry answered that the thing asked for does not exist; re-raises anything else."""
    if exc.error_code in _MISSING:
        return True
    raise exc


@dataclass(frozen=True)
class Registration:
    """Outcome of registering a run.

    Attributes:
        model_name: registered model name.
        version: the version created for (or already holding) the run.
        aliases: aliases now pointing at that version.
        created: False when the run was already registered and nothing changed.
        reason: a sentence saying what was done and why.
        signed: whether the version carries a signature (:mod:`pipelines.registry.signing`).
    """

    model_name: str
    version: str
    aliases: tuple[str, ...]
    created: bool
    reason: str
    signed: bool = False

    def to_json(self) -> dict:
        return {"model_name": self.model_name, "model_version": self.version, "aliases": list(self.aliases),
                "created": self.created, "signed": self.signed, "reason": self.reason}


def _existing_version(client: MlflowClient, model_name: str, run_id: str):
    try:
        versions = client.search_model_versions(f"name='{model_name}' and run_id='{run_id}'")
    except MlflowException as exc:
        _missing(exc)
        return None
    if not versions:
        return None
    first = min(versions, key=lambda v: int(v.version))
    return client.get_model_version(model_name, first.version)  # search results carry no aliases


def register_run(client: MlflowClient, run_id: str, model_name: str) -> Registration:
    """Register the model logged by ``run_id`` as a new version of ``model_name``.

    The new version gets alias ``challenger`` and the run's data fingerprint and config hash as tags; only
    :func:`~pipelines.registry.promotion.promote` makes a version ``champion``.

    Raises:
        RegistryError: the run did not finish successfully or logged no model.
    """
    run = client.get_run(run_id)
    existing = _existing_version(client, model_name, run_id)
    if existing is not None:
        aliases = tuple(existing.aliases)
        return Registration(model_name, str(existing.version), aliases, False,
                            f"run {run_id} is already version {existing.version}",
                            bool((existing.tags or {}).get(SIGNATURE_TAG)))
    if run.info.status not in ("FINISHED", "RUNNING"):
        raise RegistryError(f"run {run_id} has status {run.info.status}; only successful runs are registered")
    model_id = run.data.tags.get(MODEL_ID_TAG)
    if not model_id:
        raise RegistryError(f"run {run_id} logged no model (tag {MODEL_ID_TAG} missing); nothing to register")
    try:
        client.get_registered_model(model_name)
    except MlflowException as exc:
        _missing(exc)
        client.create_registered_model(model_name, description="Trained by viops (minibatch SVI).")
    # The version carries what identifies its training: the data fingerprint and the config hash of the run.
    inherited = {k: run.data.tags[k] for k in VERSION_TAGS_FROM_RUN if k in run.data.tags}
    signature = sign_run_model(client, model_id, run_id)  # before the version exists: never an unsigned half
    with process_tracking_uri(client.tracking_uri):  # where the registry store looks the logged model up
        version = client.create_model_version(model_name, source=f"models:/{model_id}", run_id=run_id,
                                              tags={**inherited, **signature}, model_id=model_id)
    client.set_registered_model_alias(model_name, CHALLENGER, version.version)
    signed = "signed" if signature else "unsigned: $VIOPS_SIGNING_KEY is not set"
    reason = f"version {version.version} registered from run {run_id} as {CHALLENGER} ({signed})"
    return Registration(model_name, str(version.version), (CHALLENGER,), True, reason, bool(signature))


_REF = re.compile(r"^(?P<name>[^@/]+?)(?:@(?P<alias>[^@/]+)|/(?P<version>\d+))?$")


def parse_model_ref(ref: str) -> tuple[str, str | None]:
    """``NAME`` -> ``(NAME, None)``; ``NAME@alias`` -> ``(NAME, "@alias")``; ``NAME/3`` -> ``(NAME, "3")``."""
    match = _REF.match(ref.strip())
    if not match:
        raise RegistryError(f"model reference {ref!r} is not NAME, NAME@alias or NAME/version")
    if match["alias"]:
        return match["name"], f"@{match['alias']}"
    return match["name"], match["version"]


def alias_version(client: MlflowClient, model_name: str, alias: str) -> str | None:
    """The version ``alias`` points at, or None when the alias (or the model) does not exist."""
    try:
        return str(client.get_model_version_by_alias(model_name, alias).version)
    except MlflowException as exc:
        _missing(exc)
        return None


def resolve_version(client: MlflowClient, model_name: str, selector: str):
    """The ``ModelVersion`` for ``selector``: a version number (``"3"``) or an alias (``"@champion"``).

    Raises:
        RegistryError: no such model, version or alias, or the version is not READY.
    """
    try:
        client.get_registered_model(model_name)
    except MlflowException as exc:
        _missing(exc)
        raise RegistryError(f"no registered model named {model_name!r}") from None
    selector = str(selector).strip()
    if selector.startswith("@"):
        alias = selector[1:]
        try:
            found = client.get_model_version_by_alias(model_name, alias)
        except MlflowException as exc:
            _missing(exc)
            raise RegistryError(f"model {model_name!r} has no alias {alias!r}") from None
    else:
        if not selector.isdigit():
            raise RegistryError(f"version must be a number or @alias, got {selector!r}")
        try:
            found = client.get_model_version(model_name, selector)
        except MlflowException as exc:
            _missing(exc)
            raise RegistryError(f"model {model_name!r} has no version {selector}") from None
    if found.status != "READY":
        raise RegistryError(f"version {found.version} of {model_name!r} is {found.status}, not READY")
    return found


def gate_verdict(version) -> dict | None:
    """The gate's last verdict on a ``ModelVersion`` (from its tags), or None if it was never evaluated."""
    tags = version.tags or {}
    if "viops.gate.passed" not in tags:
        return None
    reasons = tags.get("viops.gate.reasons", "")
    return {
        "passed": tags["viops.gate.passed"] == "true",
        "reasons": [r for r in reasons.split("\n") if r],
        "evaluation_run_id": tags.get("viops.gate.evaluation_run_id"),
        "against_version": tags.get("viops.gate.against_version") or None,
    }
