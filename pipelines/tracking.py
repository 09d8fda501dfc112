"""The MLflow tracking URI every command uses, how long a request to it may take, and how it is shown.

- :func:`resolve_tracking_uri`: explicit, else ``$MLFLOW_TRACKING_URI``, else local SQLite. It is always passed
  explicitly to MLflow and Lightning (whose logger would otherwise fall back to ``./mlruns``).
- :func:`bound_request_time`: MLflow's own HTTP defaults retry a refused connection for ~4.5 minutes and wait 120 s
  for each reply; viops sets a budget that fails an unreachable server in ~30 s (each setting can be overridden by
  setting its ``MLFLOW_HTTP_REQUEST_*`` variable).
- :func:`redact`: URIs are printed, logged and stored without their password or token.
- :func:`infrastructure_error`: the one line a command prints when the tracking server or the disk failed it.
- :func:`experiment_id`: an experiment by name, created if missing, safe when two processes create it at once.
- :func:`process_tracking_uri`: MLflow's process-wide tracking URI set for a block, for the MLflow calls that read
  it whatever client they are made through.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re

__all__ = ["DEFAULT_TRACKING_URI", "HTTP_BUDGET", "resolve_tracking_uri", "bound_request_time", "redact",
           "infrastructure_error", "experiment_id", "process_tracking_uri"]

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"

#: viops' request budget for MLflow's HTTP client: a refused connection fails after ~3 s of retries, a server that
#: accepts but never answers after 3 x 10 s. Set the variable yourself to change one.
HTTP_BUDGET = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
}


def experiment_id(client, name: str, **create) -> str:
    """The id of experiment ``name``, created (with ``create``'s keyword arguments) when it does not exist yet.

    Two processes that find it missing at once (two monitors opening their first incident, two trainings of a new
    model) both try to create it; the one that loses gets ``RESOURCE_ALREADY_EXISTS`` and reads the winner's.
    """
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name, **create)
    except MlflowException as exc:
        found = client.get_experiment_by_name(name)
        if exc.error_code != "RESOURCE_ALREADY_EXISTS" or found is None:
            raise
        return found.experiment_id


@contextlib.contextmanager
def process_tracking_uri(uri: str):
    """Make ``uri`` MLflow's process-wide tracking URI for the block; then put back the one set before (or none) and
    ``$MLFLOW_TRACKING_URI`` as they were.

    Some MLflow calls read the process-wide URI whatever client they are made through: the SQL registry store looks
    up the logged model of a version created from a ``models:/<model id>`` source with it. A process that is given a
    tracking URI as an argument, or that has trained into another store before, must not send that lookup elsewhere.
    """
    import mlflow
    from mlflow.tracking._tracking_service import utils  # the URI mlflow.set_tracking_uri set (None: not set)

    if mlflow.get_tracking_uri() == uri:
        yield
        return
    previous, env = utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
        if env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env


def resolve_tracking_uri(explicit: str | None = None) -> str:
    """The tracking URI: explicit argument, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` here."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def bound_request_time() -> None:
    """Apply :data:`HTTP_BUDGET` to this process and its children, leaving any variable already set alone."""
    for name, value in HTTP_BUDGET.items():
        os.environ.setdefault(name, value)


_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:/@\s]*):(?P<secret>[^@/\s]*)@")
_SECRET_QUERY = re.compile(r"(?P<key>[?&](?:[A-Za-z_]*(?:token|password|passwd|secret|key|sig|signature|"
                           r"credential)[A-Za-z_]*))=(?P<value>[^&#\s\"']*)", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with every URI's password (``user:***@``) and secret query parameters (``?token=***``) masked."""
    if not isinstance(text, str) or "://" not in text and "=" not in text:
        return text
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    return _SECRET_QUERY.sub(lambda m: f"{m['key']}=***", text)


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


_CONNECTION_SIGNS = (
    ("Connection refused", "connection refused"),
    ("Max retries exceeded", "no answer after retries"),
    ("Name or service not known", "host name not resolved"),
    ("NameResolutionError", "host name not resolved"),
    ("timed out", "no reply in time"),
    ("timeout exception", "no reply in time"),
    ("RemoteDisconnected", "the server closed the connection"),
    ("Connection reset", "connection reset"),
    ("ConnectionError", "connection failed"),
)
_DISK_ERRNOS = {errno.EROFS: "read-only file system", errno.ENOSPC: "no space left on device",
                errno.EDQUOT: "disk quota exceeded", errno.EACCES: "permission denied", errno.EIO: "I/O error"}


def _connection_reason(exc: BaseException) -> str | None:
    import requests

    links = list(_chain(exc))
    for link in links:
        if isinstance(link, requests.exceptions.Timeout):
            return f"no reply within {os.environ.get('MLFLOW_HTTP_REQUEST_TIMEOUT', '120')} s"
    text = " ".join(f"{type(link).__name__}: {link}" for link in links)
    network = (requests.exceptions.ConnectionError, ConnectionError, TimeoutError)
    if "API request to" not in text and not any(isinstance(link, network) for link in links):
        return None
    found = next((reason for sign, reason in _CONNECTION_SIGNS if sign in text), None)
    return found or redact(str(links[-1]).splitlines()[0] if str(links[-1]) else type(links[-1]).__name__)[:200]


def _path_of(error: OSError) -> str:
    """The file an OS error is about: its ``filename``, else the destination the failing call was writing (a write
    that runs out of space names no file), found in the innermost frames of its traceback."""
    if error.filename:
        return str(error.filename)
    frames = []
    tb = error.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        for name in ("destination_file_path", "dst", "dest", "destination", "target"):
            value = frame.f_locals.get(name)
            if isinstance(value, (str, os.PathLike)) and str(value):
                return os.fspath(value)
    return "a file"


def infrastructure_error(exc: BaseException, tracking_uri: str) -> str | None:
    """One line for an exception that says the infrastructure failed the command (tracking server unreachable,
    tracking database unusable, artifact store read-only or full), or None when it is not one of those."""
    for link in _chain(exc):
        number = getattr(link, "errno", None)
        if isinstance(link, OSError) and number in _DISK_ERRNOS:
            return f"cannot use {_path_of(link)}: {_DISK_ERRNOS[number]}"
    if tracking_uri.startswith(("http://", "https://")):
        reason = _connection_reason(exc)
        if reason is not None:
            return f"tracking server unreachable at {redact(tracking_uri)}: {reason}"
    for link in _chain(exc):
        text = str(link)
        if type(link).__name__ == "OperationalError" and ("unable to open" in text or "locked" in text
                                                           or "could not connect" in text):
            return f"tracking store {redact(tracking_uri)} unusable: {redact(text.splitlines()[0])[:300]}"
    return None
