"""Moving ``champion``: promotion and rollback, each one audit record (:mod:`pipelines.registry.audit`).

The ``champion`` alias is what production serves. Only :func:`promote` and :func:`rollback` move it:

- ``promote`` points ``previous-champion`` at the old champion, then ``champion`` at the new version. Each alias move
  is one atomic registry write, so there is never a moment without a champion. A version the gate rejected is
  refused unless forced.
- ``rollback`` points ``champion`` back at ``previous-champion``, tags the demoted version ``viops.rolled_back=true``,
  and removes ``previous-champion`` (there is nothing further back to go to).

Both are idempotent: repeating one that already happened changes nothing, says so, and completes an audit record
that a crash may have left unwritten.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from mlflow import MlflowClient

from pipelines.registry.versions import (
    CHALLENGER,
    CHAMPION,
    PREVIOUS_CHAMPION,
    RegistryError,
    alias_version,
    gate_verdict,
    resolve_version,
)

__all__ = ["AliasChange", "NothingToRollBack", "GateRejected", "promote", "rollback"]


class NothingToRollBack(RegistryError):
    """``rollback`` was asked for, but the model has no ``previous-champion`` to go back to."""


class GateRejected(RegistryError):
    """``promote`` of a version the evaluation gate rejected, without ``force``: a negative verdict (``viops``
    exits 1), not bad input. Nothing changed."""


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
    from pipelines.registry.audit import AuditRecord, write_record

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


#: Seconds a promotion or rollback waits for another operation on the model to release its lease.
LEASE_WAIT_SECONDS = 30.0


def promote(client: MlflowClient, model_name: str, version: str, *, reason: str, actor: str,
            audit_log=None, force: bool = False, trigger: dict | None = None,
            evidence: dict | None = None) -> AliasChange:
    """Make ``version`` the champion; the old champion becomes ``previous-champion``. Holds the model's lease
    (:mod:`pipelines.registry.lease`), so two promotions at once are one change and one no-op.

    A version the gate rejected is refused unless ``force``. Promoting the current champion changes nothing.
    ``evidence``: the live evidence of a challenger's shadow windows (:mod:`monitoring.shadow`), recorded beside the
    gate's verdict in the audit record (``verdict.live``); the version's deployment stage becomes ``promoted``.

    Raises:
        RegistryError: unknown model or version.
        GateRejected: the gate rejected the version (and no ``force``).
        SignatureInvalid: the version's files fail signature verification (:mod:`pipelines.registry.signing`).
        LeaseHeld: another operation on the model kept its lease for :data:`LEASE_WAIT_SECONDS`.
    """
    from pipelines.registry.lease import hold

    with hold(client, model_name, "promote", wait=LEASE_WAIT_SECONDS, incident=(trigger or {}).get("incident_id")):
        return _promote(client, model_name, version, reason=reason, actor=actor, audit_log=audit_log, force=force,
                        trigger=trigger, evidence=evidence)


def _promote(client: MlflowClient, model_name: str, version: str, *, reason: str, actor: str,
             audit_log=None, force: bool = False, trigger: dict | None = None,
             evidence: dict | None = None) -> AliasChange:
    from pipelines.registry.audit import AuditRecord, utc_now, write_record
    from pipelines.registry.signing import verify_version

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
        raise GateRejected(f"version {new} of {model_name} failed the evaluation gate "
                            f"({'; '.join(verdict['reasons']) or 'no reasons recorded'}); not promoted. "
                            f"Re-evaluate it, or promote with --force to override the gate")
    verify_version(client, model_name, target)  # a version whose files changed since it was signed is refused
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
    if evidence is not None:
        from pipelines.registry.deployment import mark_promoted

        mark_promoted(client, model_name, new)
        verdict = {**(verdict or {}), "live": evidence}
    record = AuditRecord(event_id, "promote", model_name, current, new, reason, actor, now, verdict,
                         trigger or {})
    audit_run = write_record(client, record, audit_log)
    was = f"; version {current} is now {PREVIOUS_CHAMPION}" if current else " (the model had no champion)"
    return AliasChange("promote", model_name, current, new, True,
                       f"version {new} of {model_name} is now {CHAMPION}{was}", event_id, audit_run)


def rollback(client: MlflowClient, model_name: str, *, reason: str, actor: str, audit_log=None,
             verdict: dict | None = None, trigger: dict | None = None) -> AliasChange:
    """Point ``champion`` back at ``previous-champion`` and tag the demoted version ``viops.rolled_back=true`` (with
    the trigger's incident); the demoted version loses ``challenger`` if it held it.
    Holds the model's lease, like :func:`promote`.

    Raises:
        RegistryError: the model has no champion.
        NothingToRollBack: there is no ``previous-champion`` (and no rollback to repeat); nothing changed.
        SignatureInvalid: the previous champion's files fail signature verification; nothing changed.
        LeaseHeld: another operation on the model kept its lease for :data:`LEASE_WAIT_SECONDS`.
    """
    from pipelines.registry.lease import hold

    with hold(client, model_name, "rollback", wait=LEASE_WAIT_SECONDS, incident=(trigger or {}).get("incident_id")):
        return _rollback(client, model_name, reason=reason, actor=actor, audit_log=audit_log, verdict=verdict,
                         trigger=trigger)


def _rollback(client: MlflowClient, model_name: str, *, reason: str, actor: str, audit_log=None,
              verdict: dict | None = None, trigger: dict | None = None) -> AliasChange:
    from pipelines.registry.audit import AuditRecord, utc_now, write_record
    from pipelines.registry.signing import verify_version

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
    restored_version = resolve_version(client, model_name, previous)
    verify_version(client, model_name, restored_version)  # never roll back onto files changed since they were signed
    restored = str(restored_version.version)
    event_id, now = uuid.uuid4().hex, utc_now()
    incident = (trigger or {}).get("incident_id")
    _set_tags(client, model_name, champion_version, {
        "viops.rolled_back": "true", "viops.rolled_back_at": now, "viops.rolled_back_by": actor,
        "viops.rollback_reason": reason, **({"viops.rolled_back.incident": str(incident)} if incident else {}),
    })
    _set_tags(client, model_name, restored, {
        "viops.rollback.event_id": event_id, "viops.rollback.at": now, "viops.rollback.by": actor,
        "viops.rollback.reason": reason, "viops.rollback.from": champion_version,
    })
    client.set_registered_model_alias(model_name, CHAMPION, restored)
    client.delete_registered_model_alias(model_name, PREVIOUS_CHAMPION)
    if alias_version(client, model_name, CHALLENGER) == champion_version:  # a rolled-back version is no candidate
        client.delete_registered_model_alias(model_name, CHALLENGER)
    record = AuditRecord(event_id, "rollback", model_name, champion_version, restored, reason, actor, now,
                         verdict, trigger or {})
    audit_run = write_record(client, record, audit_log)
    return AliasChange("rollback", model_name, champion_version, restored, True,
                       f"rolled back {model_name}: version {restored} is {CHAMPION} again; version "
                       f"{champion_version} is tagged rolled_back", event_id, audit_run)
