"""Single flight: at most one retrain, promotion or rollback of a model at a time, across processes and hosts.

The lease is a registered model named ``<model>.viops-lease`` in the same registry. Creating a registered model is
one insert under the registry's unique name constraint, so when two processes ask at once exactly one creation
succeeds, whichever host they run on (SQLite, PostgreSQL, or an MLflow server in front of either); the loser is told
``RESOURCE_ALREADY_EXISTS``. The lease's tags say who holds it, for what, and until when; a holder renews it while
it works and deletes it when done. A lease whose holder died is taken over once it has expired
(``VIOPS_LEASE_TTL_SECONDS``, default 300 s).

What the holder does inside its ``with`` block (the promotion a retrain ends with) and its child processes hold it
too: :func:`hold` puts the lease's token in ``VIOPS_LEASE_TOKEN``, and asking for a lease whose token is that one
succeeds without waiting.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass

from mlflow.exceptions import MlflowException

from pipelines.registry.audit import default_actor
from pipelines.registry.versions import RegistryError

__all__ = ["LeaseHeld", "Lease", "hold", "lease_name", "TOKEN_ENV"]

TOKEN_ENV = "VIOPS_LEASE_TOKEN"
SUFFIX = ".viops-lease"


class LeaseHeld(RuntimeError):
    """Another process holds the model's lease; nothing was done. The message says who holds it and for what."""


def lease_name(model: str) -> str:
    """The registered model that is ``model``'s lease."""
    return f"{model}{SUFFIX}"


def _ttl() -> float:
    return float(os.environ.get("VIOPS_LEASE_TTL_SECONDS", "300"))


@dataclass
class Lease:
    """A lease this process holds (``owned``) or shares with the parent that holds it."""

    model: str
    token: str
    operation: str
    owned: bool


def _describe(tags: dict) -> str:
    since = tags.get("viops.lease.since")
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(since))) if since else "?"
    incident = f", incident {tags['viops.lease.incident']}" if tags.get("viops.lease.incident") else ""
    return f"{tags.get('viops.lease.operation', '?')} by {tags.get('viops.lease.holder', '?')} since {when}{incident}"


def _try_create(client, model: str, token: str, operation: str, incident: str | None) -> bool:
    now = time.time()
    tags = {"viops.lease.token": token, "viops.lease.operation": operation, "viops.lease.since": f"{now:.3f}",
            "viops.lease.expires": f"{now + _ttl():.3f}", "viops.lease.incident": incident or "",
            "viops.lease.holder": f"{default_actor()} on {socket.gethostname()} (pid {os.getpid()})"}
    try:
        client.create_registered_model(
            lease_name(model), tags=tags,
            description=f"viops single-flight lease of {model}: exists while a retrain, promotion or rollback of it "
                        f"runs (docs/operations.md#single-flight). Safe to delete once viops.lease.expires passed.")
        return True
    except MlflowException as exc:
        if exc.error_code == "INVALID_PARAMETER_VALUE":
            raise RegistryError(f"model name {model!r} is not valid: {exc.message}") from None
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            # MLflow's SQL store words its refusal by reading the lease back; its holder released it in between.
            return False
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return False


def _current(client, model: str) -> dict | None:
    try:
        return dict(client.get_registered_model(lease_name(model)).tags or {})
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def _delete(client, model: str, token: str) -> None:
    """Delete the lease if ``token`` still holds it."""
    tags = _current(client, model)
    if tags is not None and tags.get("viops.lease.token") == token:
        with contextlib.suppress(MlflowException):
            client.delete_registered_model(lease_name(model))


def acquire(client, model: str, operation: str, *, wait: float = 0.0, incident: str | None = None) -> Lease:
    """Take ``model``'s lease for ``operation``, waiting up to ``wait`` seconds for its holder to finish.

    Raises:
        LeaseHeld: another process still holds it after ``wait`` seconds.
    """
    inherited = os.environ.get(TOKEN_ENV)
    deadline = time.monotonic() + wait
    while True:
        token = uuid.uuid4().hex
        if _try_create(client, model, token, operation, incident):
            return Lease(model, token, operation, owned=True)
        tags = _current(client, model)
        if tags is None:
            continue  # released between our attempt and the read: try again
        if inherited and tags.get("viops.lease.token") == inherited:
            return Lease(model, inherited, operation, owned=False)
        if float(tags.get("viops.lease.expires", "0")) < time.time():
            _delete(client, model, tags.get("viops.lease.token", ""))  # its holder died: take it over
            continue
        if time.monotonic() >= deadline:
            raise LeaseHeld(f"a {operation} of {model} cannot start: already in progress ({_describe(tags)})")
        time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))


def _renew(client, lease: Lease, stop: threading.Event) -> None:
    while not stop.wait(_ttl() / 3):
        with contextlib.suppress(Exception):  # a renewal that fails is retried; the lease expires if all do
            client.set_registered_model_tag(lease_name(lease.model), "viops.lease.expires",
                                            f"{time.time() + _ttl():.3f}")


@contextlib.contextmanager
def hold(client, model: str, operation: str, *, wait: float = 0.0, incident: str | None = None):
    """Hold ``model``'s lease for the ``with`` block (renewed while it runs; children share it).

    Raises:
        LeaseHeld: see :func:`acquire`.
    """
    lease = acquire(client, model, operation, wait=wait, incident=incident)
    if not lease.owned:
        yield lease
        return
    stop = threading.Event()
    renewer = threading.Thread(target=_renew, args=(client, lease, stop), daemon=True, name="viops-lease")
    renewer.start()
    previous = os.environ.get(TOKEN_ENV)
    os.environ[TOKEN_ENV] = lease.token
    try:
        yield lease
    finally:
        stop.set()
        if previous is None:
            os.environ.pop(TOKEN_ENV, None)
        else:
            os.environ[TOKEN_ENV] = previous
        _delete(client, model, lease.token)
