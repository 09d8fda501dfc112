"""A challenger on live traffic: the deployment stage a version is in after the gate, recorded on the version.

A version that passed the gate is either promoted at once (``deploy.strategy: offline``) or deployed live
(:func:`start_deployment`): in **shadow** it keeps the ``challenger`` alias and every monitored window is scored by
it too; in **canary** it also answers a sticky share of the traffic (:mod:`pipelines.serving.routing`), ramped up
step by step (:func:`ramp`). The monitor promotes it after enough clean windows or rejects it (:func:`reject`) at its
first bad one (:mod:`monitoring.shadow`). The stage and the policy it is judged by live in the version's tags:

- ``viops.deploy.stage``: ``shadow`` or ``canary``, then ``promoted`` or ``rejected``;
- ``viops.deploy.step`` and ``viops.deploy.fraction`` (canary): the ramp step and the share of traffic it answers;
- ``viops.deploy.policy``: the ``deploy:`` section (JSON) of the config the version was trained with;
- ``viops.deploy.started_at`` / ``started_by`` / ``reason``; after a rejection ``rejected_at`` / ``rejected_by`` /
  ``reasons`` (one per line), and an audit record (action ``reject``) with the evidence.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

from mlflow import MlflowClient

from pipelines.config.release import DeployConfig
from pipelines.registry.versions import (
    CHALLENGER,
    CHAMPION,
    RegistryError,
    alias_version,
    gate_verdict,
    resolve_version,
)

__all__ = ["Deployment", "start_deployment", "deploy_version", "live_candidate", "ramp", "reject", "mark_promoted",
           "STAGE_TAG", "LIVE_STAGES"]

STAGE_TAG = "viops.deploy.stage"
POLICY_TAG = "viops.deploy.policy"
#: The stages of a version deployed live: judged on every monitored window.
LIVE_STAGES = ("shadow", "canary")


@dataclass(frozen=True)
class Deployment:
    """A version's deployment stage and the policy it is judged by.

    Attributes:
        stage: ``shadow``, ``canary``, ``promoted`` or ``rejected``.
        started_at: when its live stage began (UTC, ISO 8601).
        step: the canary's ramp step (an index into ``policy.steps``); 0 in shadow.
        fraction: the share of traffic it answers (0 in shadow).
    """

    model: str
    version: str
    stage: str
    policy: DeployConfig
    started_at: str | None = None
    step: int = 0
    fraction: float = 0.0

    @classmethod
    def of(cls, model: str, version) -> Deployment | None:
        """From a ``ModelVersion``'s tags; None for a version that never entered a live stage."""
        tags = version.tags or {}
        if STAGE_TAG not in tags:
            return None
        return cls(model, str(version.version), tags[STAGE_TAG],
                   DeployConfig.model_validate(json.loads(tags.get(POLICY_TAG) or "{}")),
                   tags.get("viops.deploy.started_at"), int(tags.get("viops.deploy.step", 0)),
                   float(tags.get("viops.deploy.fraction", 0.0)))

    @property
    def live(self) -> bool:
        return self.stage in LIVE_STAGES

    def to_json(self) -> dict:
        return {"model": self.model, "version": self.version, "stage": self.stage, "step": self.step,
                "fraction": self.fraction, "policy": self.policy.model_dump(), "started_at": self.started_at}


def start_deployment(client: MlflowClient, model: str, version: str, *, policy: DeployConfig, reason: str,
                     actor: str) -> Deployment:
    """Deploy ``version`` (the challenger, which passed the gate) live: in canary at ``policy.canary_fraction`` when
    ``policy.strategy`` is ``canary``, else in shadow. Idempotent: a version already live is left as it is.

    Raises:
        RegistryError: no such version; it is not the ``challenger``; the gate did not pass it; or it already left
            its live stage (promoted or rejected).
    """
    from pipelines.registry.audit import utc_now

    target = resolve_version(client, model, version)
    current = Deployment.of(model, target)
    if current is not None:
        if not current.live:
            raise RegistryError(f"version {target.version} of {model} was {current.stage} after its live stage; it "
                                f"is not deployed again")
        return current
    if alias_version(client, model, CHALLENGER) != str(target.version):
        raise RegistryError(f"version {target.version} of {model} is not the {CHALLENGER}; only the challenger is "
                            f"deployed live")
    verdict = gate_verdict(target)
    if verdict is None or not verdict["passed"]:
        raise RegistryError(f"version {target.version} of {model} has not passed the evaluation gate; run viops "
                            f"evaluate first")
    now = utc_now()
    canary = policy.strategy == "canary"
    stage, fraction = ("canary", policy.canary_fraction) if canary else ("shadow", 0.0)
    for key, value in {POLICY_TAG: json.dumps(policy.model_dump()), "viops.deploy.started_at": now,
                       "viops.deploy.started_by": actor, "viops.deploy.reason": reason, "viops.deploy.step": "0",
                       "viops.deploy.fraction": str(fraction),
                       STAGE_TAG: stage}.items():  # the stage last: a reader never sees a stage without policy
        client.set_model_version_tag(model, str(target.version), key, value)
    return Deployment(model, str(target.version), stage, policy, now, 0, fraction)


def deploy_version(client: MlflowClient, model: str, version: str, *, tracking_uri: str, reason: str, actor: str,
                   strategy: str | None = None) -> Deployment:
    """:func:`start_deployment` under the ``deploy:`` policy ``version`` was trained with (its files checked against
    their signature first), in ``strategy`` when given, else the policy's (shadow when the policy says offline).

    Raises:
        SignatureInvalid: the version's files fail their signature check; nothing was deployed.
        RegistryError: as :func:`start_deployment`.
    """
    from pipelines.serving.loading import load_version

    loaded = load_version(client, model, version, tracking_uri=tracking_uri)
    policy = loaded.artifacts(tracking_uri).resolved_config().deploy
    chosen = strategy or (policy.strategy if policy.strategy != "offline" else "shadow")
    return start_deployment(client, model, loaded.version, policy=policy.model_copy(update={"strategy": chosen}),
                            reason=reason, actor=actor)


def live_candidate(client: MlflowClient, model: str) -> Deployment | None:
    """The challenger deployed live (shadow or canary), or None (no challenger, one not live, or the champion)."""
    version = alias_version(client, model, CHALLENGER)
    if version is None or version == alias_version(client, model, CHAMPION):
        return None
    deployment = Deployment.of(model, client.get_model_version(model, version))
    return deployment if deployment is not None and deployment.live else None


def ramp(client: MlflowClient, model: str, version: str, step: int) -> dict:
    """Move a canary to ramp ``step`` (its fraction is ``policy.steps[step]``). Idempotent: a canary already at or
    past ``step`` changes nothing.

    Raises:
        RegistryError: the version is not in canary, or ``step`` is past the last one.
    """
    target = resolve_version(client, model, version)
    current = Deployment.of(model, target)
    if current is None or current.stage != "canary":
        raise RegistryError(f"version {target.version} of {model} is not in canary; only a canary is ramped")
    steps = current.policy.steps
    if not 0 <= step < len(steps):
        raise RegistryError(f"ramp step {step} of version {target.version}: the policy has steps 0..{len(steps) - 1} "
                            f"({steps})")
    if current.step >= step:
        return {"action": "ramp", "model": model, "version": str(target.version), "changed": False,
                "fraction": current.fraction, "message": f"version {target.version} of {model} is already at step "
                                                         f"{current.step} ({current.fraction:.0%}); nothing changed"}
    client.set_model_version_tag(model, str(target.version), "viops.deploy.fraction", str(steps[step]))
    client.set_model_version_tag(model, str(target.version), "viops.deploy.step", str(step))
    return {"action": "ramp", "model": model, "version": str(target.version), "changed": True, "fraction": steps[step],
            "message": f"canary version {target.version} of {model} now answers {steps[step]:.0%} of the traffic "
                       f"(step {step} of {len(steps) - 1})"}


def mark_promoted(client: MlflowClient, model: str, version: str) -> None:
    """Record that the version left the shadow as champion."""
    client.set_model_version_tag(model, version, STAGE_TAG, "promoted")


def reject(client: MlflowClient, model: str, version: str, *, reasons: list[str], actor: str, evidence: dict,
           audit_log=None, trigger: dict | None = None) -> dict:
    """Reject a challenger in shadow or canary (a canary rollback): tag it ``rejected`` with the reasons, remove its
    ``challenger`` alias and write an audit record (action ``reject``, the evidence as its verdict). The champion is
    untouched. Idempotent: a version already rejected changes nothing.

    Raises:
        RegistryError: no such version, or it is not in shadow.
    """
    from pipelines.registry.audit import AuditRecord, utc_now, write_record

    target = resolve_version(client, model, version)
    current = Deployment.of(model, target)
    if current is not None and current.stage == "rejected":
        return {"action": "reject", "model": model, "version": str(target.version), "changed": False,
                "message": f"version {target.version} of {model} was already rejected; nothing changed"}
    if current is None or not current.live:
        raise RegistryError(f"version {target.version} of {model} is not deployed live (shadow or canary); only a "
                            f"live challenger is rejected on live evidence")
    now, new = utc_now(), str(target.version)
    client.set_model_version_tag(model, new, "viops.deploy.rejected_at", now)
    client.set_model_version_tag(model, new, "viops.deploy.rejected_by", actor)
    client.set_model_version_tag(model, new, "viops.deploy.reasons", "\n".join(reasons))
    client.set_model_version_tag(model, new, STAGE_TAG, "rejected")
    if alias_version(client, model, CHALLENGER) == new:
        client.delete_registered_model_alias(model, CHALLENGER)
    champion = alias_version(client, model, CHAMPION)
    record = AuditRecord(uuid.uuid4().hex, "reject", model, champion, champion or "-", "; ".join(reasons), actor, now,
                         {"passed": False, "candidate_version": new, "reasons": reasons, "live": evidence},
                         trigger or {})
    audit_run = write_record(client, record, audit_log)
    return {"action": "reject", "model": model, "version": new, "changed": True, "audit_run_id": audit_run,
            "message": f"version {new} of {model} rejected in {current.stage} ({'; '.join(reasons)}); champion "
                       f"stays version {champion}"}
