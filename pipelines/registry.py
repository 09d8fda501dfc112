"""MLflow model registry: register a training run as ``challenger``; move ``champion`` by promotion or rollback.

Registration is idempotent per run: registering the same run twice (an Airflow retry, say) returns the version that
already exists instead of creating a second one. Only runs that FINISHED and logged a model are registered.

The ``champion`` alias is what production serves. Only :func:`promote` and :func:`rollback` move it, each writing
one audit record (:mod:`pipelines.audit`):

- ``promote`` points ``previous-champion`` at the old champion, then ``champion`` at the new version. Each alias move
  is one atomic registry write, so there is never a moment without a champion.
- ``rollback`` points ``champion`` back at ``previous-champion``, tags the demoted version ``viops.rolled_back=true``,
  and removes ``previous-champion`` (there is nothing further back to go to).

Both are idempotent: repeating one that already happened changes nothing, says so, and completes an audit record
that a crash may have left unwritten.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

__all__ = [
    "AliasChange", "Registration", "RegistryError", "NothingToRollBack", "register_run", "promote", "rollback",
    "parse_model_ref", "resolve_version", "alias_version", "gate_verdict", "CHAMPION", "CHALLENGER",
    "PREVIOUS_CHAMPION",
]

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS_CHAMPION = "previous-champion"
MODEL_ID_TAG = "viops.model_id"


class RegistryError(RuntimeError):
    """A registry request cannot be carried out (unknown model or version, a run that cannot be registered, ...);
    the message says why. Nothing was changed."""


class NothingToRollBack(RegistryError):
    """``rollback`` was asked for, but the model has no ``previous-champion`` to go back to."""


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


def register_run(client: MlflowClient, run_id: str, model_name: str, tags: dict[str, str] | None = None) -> Registration:
    """Register the model logged by ``run_id`` as a new version of ``model_name``.

    The new version gets alias ``challenger``; only :func:`promote` makes a version ``champion``.

    Raises:
        RegistryError: the run did not finish successfully or logged no model.
    """
    run = client.get_run(run_id)
    existing = _existing_version(client, model_name, run_id)
    if existing is not None:
        aliases = tuple(existing.aliases)
        return Registration(
            model_name, str(existing.version), aliases, False, f"run {run_id} is already version {existing.version}"
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
    client.set_registered_model_alias(model_name, CHALLENGER, version.version)
    reason = f"version {version.version} registered from run {run_id} as {CHALLENGER}"
    return Registration(model_name, str(version.version), (CHALLENGER,), True, reason)


# --- finding versions ---------------------------------------------------------------------------------------------

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
    except MlflowException:
        return None


def resolve_version(client: MlflowClient, model_name: str, selector: str):
    """The ``ModelVersion`` for ``selector``: a version number (``"3"``) or an alias (``"@champion"``).

    Raises:
        RegistryError: no such model, version or alias, or the version is not READY.
    """
    try:
        client.get_registered_model(model_name)
    except MlflowException:
        raise RegistryError(f"no registered model named {model_name!r}") from None
    selector = str(selector).strip()
    if selector.startswith("@"):
        alias = selector[1:]
        try:
            found = client.get_model_version_by_alias(model_name, alias)
        except MlflowException:
            raise RegistryError(f"model {model_name!r} has no alias {alias!r}") from None
    else:
        if not selector.isdigit():
            raise RegistryError(f"version must be a number or @alias, got {selector!r}")
        try:
            found = client.get_model_version(model_name, selector)
        except MlflowException:
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


# --- moving the champion ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AliasChange:
    """Outcome of a promotion or rollback.

    Attributes:
        action: ``promote`` or ``rollback``.
        changed: False when the request had already been carried out (a retry); nothing moved.
        message: one sentence for people.
        audit_run_id: the audit record's MLflow run (also for a retry whose record was already written).
    """

    action: str
    model_name: str
    from_version: str | None
    to_version: str
    changed: bool
    message: str
    event_id: str | None = None
    audit_run_id: str | None = None

    def to_json(self) -> dict:
        return {"action": self.action, "model_name": self.model_name, "from_version": self.from_version,
                "to_version": self.to_version, "changed": self.changed, "message": self.message,
                "event_id": self.event_id, "audit_run_id": self.audit_run_id}


def _set_tags(client: MlflowClient, model_name: str, version: str, tags: dict[str, str]) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(model_name, version, key, value)


def _complete_audit(client, model_name: str, version, action: str, audit_log) -> tuple[str | None, str | None]:
    """After a retry: write the audit record of the change recorded in ``version``'s tags if it is missing."""
    from pipelines.audit import AuditRecord, write_record

    tags = version.tags or {}
    event_id = tags.get(f"viops.{action}.event_id")
    if not event_id:
        return None, None
    record = AuditRecord(
        event_id=event_id, action=action, model=model_name, from_version=tags.get(f"viops.{action}.from") or None,
        to_version=str(version.version), reason=tags.get(f"viops.{action}.reason", ""),
        actor=tags.get(f"viops.{action}.by", ""), time=tags.get(f"viops.{action}.at", ""),
        verdict=gate_verdict(version) if action == "promote" else None,
    )
    return event_id, write_record(client, record, audit_log)


def promote(client: MlflowClient, model_name: str, version: str, *, reason: str, actor: str,
            audit_log=None, force: bool = False, trigger: dict | None = None) -> AliasChange:
    """Make ``version`` the champion; the old champion becomes ``previous-champion``.

    A version the gate rejected is refused unless ``force``. Promoting the current champion changes nothing.

    Raises:
        RegistryError: unknown model/version, or a version that failed the gate (without ``force``).
    """
    from pipelines.audit import AuditRecord, utc_now, write_record

    target = resolve_version(client, model_name, version)
    new = str(target.version)
    current = alias_version(client, model_name, CHAMPION)
    if current == new:
        event_id, audit_run = _complete_audit(client, model_name, target, "promote", audit_log)
        return AliasChange("promote", model_name, current, new, False,
                           f"version {new} of {model_name} is already {CHAMPION}; nothing changed",
                           event_id, audit_run)
    verdict = gate_verdict(target)
    if verdict is not None and not verdict["passed"] and not force:
        raise RegistryError(f"version {new} of {model_name} failed the evaluation gate "
                            f"({'; '.join(verdict['reasons']) or 'no reasons recorded'}); not promoted. "
                            f"Re-evaluate it, or promote with --force to override the gate")
    event_id, now = uuid.uuid4().hex, utc_now()
    _set_tags(client, model_name, new, {
        "viops.promote.event_id": event_id, "viops.promote.at": now, "viops.promote.by": actor,
        "viops.promote.reason": reason, "viops.promote.from": current or "",
        **({"viops.promote.forced": "true"} if force and verdict is not None and not verdict["passed"] else {}),
    })
    if current is not None:
        client.set_registered_model_alias(model_name, PREVIOUS_CHAMPION, current)
    client.set_registered_model_alias(model_name, CHAMPION, new)  # one atomic write: never no champion
    if current is not None:
        _set_tags(client, model_name, current, {"viops.demoted_at": now, "viops.demoted_by": actor,
                                                "viops.demotion_reason": f"replaced by version {new}: {reason}"})
    record = AuditRecord(event_id, "promote", model_name, current, new, reason, actor, now, verdict,
                         trigger or {})
    audit_run = write_record(client, record, audit_log)
    was = f"; version {current} is now {PREVIOUS_CHAMPION}" if current else " (the model had no champion)"
    return AliasChange("promote", model_name, current, new, True,
                       f"version {new} of {model_name} is now {CHAMPION}{was}", event_id, audit_run)


def rollback(client: MlflowClient, model_name: str, *, reason: str, actor: str, audit_log=None,
             verdict: dict | None = None, trigger: dict | None = None) -> AliasChange:
    """Point ``champion`` back at ``previous-champion`` and tag the demoted version ``viops.rolled_back=true``.

    Raises:
        RegistryError: the model has no champion.
        NothingToRollBack: there is no ``previous-champion`` (and no rollback to repeat); nothing changed.
    """
    from pipelines.audit import AuditRecord, utc_now, write_record

    champion_version = alias_version(client, model_name, CHAMPION)
    if champion_version is None:
        resolve_version(client, model_name, f"@{CHAMPION}")  # raises the precise error (no model, no alias)
    champion = client.get_model_version(model_name, champion_version)
    previous = alias_version(client, model_name, PREVIOUS_CHAMPION)
    if previous is None or previous == champion_version:
        restored_by = (champion.tags or {}).get("viops.rollback.event_id")
        if restored_by is None:
            raise NothingToRollBack(
                f"model {model_name} has no {PREVIOUS_CHAMPION} to roll back to (champion is version "
                f"{champion_version}); nothing changed. Promote a known-good version instead: viops promote "
                f"--model {model_name} --version N --reason ..."
            )
        if previous is not None:  # a rollback that stopped between moving champion and removing the alias
            client.delete_registered_model_alias(model_name, PREVIOUS_CHAMPION)
        event_id, audit_run = _complete_audit(client, model_name, champion, "rollback", audit_log)
        source = (champion.tags or {}).get("viops.rollback.from", "?")
        return AliasChange("rollback", model_name, source, champion_version, False,
                           f"already rolled back: version {champion_version} of {model_name} is {CHAMPION} again "
                           f"(restored from version {source}); nothing changed", event_id, audit_run)
    restored = str(resolve_version(client, model_name, previous).version)
    event_id, now = uuid.uuid4().hex, utc_now()
    _set_tags(client, model_name, champion_version, {
        "viops.rolled_back": "true", "viops.rolled_back_at": now, "viops.rolled_back_by": actor,
        "viops.rollback_reason": reason,
    })
    _set_tags(client, model_name, restored, {
        "viops.rollback.event_id": event_id, "viops.rollback.at": now, "viops.rollback.by": actor,
        "viops.rollback.reason": reason, "viops.rollback.from": champion_version,
    })
    client.set_registered_model_alias(model_name, CHAMPION, restored)
    client.delete_registered_model_alias(model_name, PREVIOUS_CHAMPION)
    record = AuditRecord(event_id, "rollback", model_name, champion_version, restored, reason, actor, now,
                         verdict, trigger or {})
    audit_run = write_record(client, record, audit_log)
    return AliasChange("rollback", model_name, champion_version, restored, True,
                       f"rolled back {model_name}: version {restored} is {CHAMPION} again; version "
                       f"{champion_version} is tagged rolled_back", event_id, audit_run)
