"""The one retrain path: prepare (with a window's labelled rows) -> train -> register -> evaluate -> promote | reject.

``viops monitor --execute`` runs :func:`retrain`; the ``svi_retrain`` DAG runs the same steps one task each. Both
callers describe the retrain with one :class:`RetrainRequest`, so they pass the same overrides, tags, reason, actor
and audit log. Training is the ``viops train`` command in a child process (Lightning's DDP launcher re-executes its
entry script, and a crash, an out-of-memory kill or a GPU allocation stays in the child); the other steps are the
library calls behind the commands of the same name, made in the caller's process (an Airflow task is a process of
its own already), and return the JSON object the command prints with ``--json``:

1. prepare (``viops prepare --extra-data <window>``): the config's data plus the window's labelled rows with finite
   features and target, split together, written to the request's work folder;
2. ``viops train --prepared --no-register --resume``, the reason tagged on the run (``viops.trigger_reason``); a
   retry continues the unfinished run of the same run name from its checkpoint;
3. register (``viops register``): the new version becomes ``challenger`` (idempotent per run);
4. evaluate (``viops evaluate``): the gate against the champion on the new run's held-out split;
5. promote (``viops promote``) when the gate passed, with the reason, actor and trigger in the audit record; or, when
   the config says ``deploy.strategy: shadow`` or ``canary``, deploy live (``viops deploy start``): the version stays
   challenger, deployed live, and the monitor promotes or rejects it on live windows (docs/deployment.md). A version
   the gate rejected stays a challenger and the champion is untouched.

A step's failure is the exception of the library call: bad data or config, a refused signature or a registry
request that cannot be carried out are :class:`~pipelines.errors.NotRetryable`, as is a training child that exits
with a code a retry repeats (:class:`~pipelines.child_process.CLIRefused`). The training child gets the tracking URI
through ``MLFLOW_TRACKING_URI`` (never on a command line, which ``ps`` shows). :func:`retrain` holds the model's lease
(:mod:`pipelines.registry.lease`) throughout: a second retrain of the same model, from any host, is refused with
:class:`~pipelines.registry.lease.LeaseHeld` while it runs. Pushing the gate's verdict and a champion change to the
Pushgateway is the caller's part (``monitoring.events``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipelines.child_process import run_viops

__all__ = ["RetrainRequest", "prepare_data", "train_candidate", "register_candidate", "evaluate_candidate",
           "promote_candidate", "deploy_candidate", "next_step", "deploy_strategy", "retrain"]


@dataclass(frozen=True)
class RetrainRequest:
    """One retrain, as both callers describe it.

    Attributes:
        config: the training config file (the champion's resolved config, or the DAG's ``config`` param).
        reason: why; tagged on the run and recorded with the promotion.
        workdir: where the prepared data goes (keyed by the Airflow run or the window, so a retry reuses it).
        tracking_uri: the MLflow server (default: ``$MLFLOW_TRACKING_URI``, else local SQLite).
        overrides: ``dotted.key=value`` config overrides.
        window: a window file whose labelled rows join the training data.
        run_name: the MLflow run name of the training run.
        actor: who promotes (default: ``$VIOPS_ACTOR``, else the OS user).
        audit_log: the local audit file (default: ``$VIOPS_AUDIT_LOG``, else ``./viops-audit.jsonl``).
        trigger: recorded with the promotion's audit record (the incident, the window, the Airflow run ...).
        tags: ``KEY=VALUE`` tags on the training run (where it ran: the Airflow queue and worker ...).
    """

    config: str
    reason: str
    workdir: str
    tracking_uri: str | None = None
    overrides: tuple[str, ...] = ()
    window: str | None = None
    run_name: str | None = None
    actor: str | None = None
    audit_log: str | None = None
    trigger: dict = field(default_factory=dict)
    tags: tuple[str, ...] = ()

    def _sets(self) -> list[str]:
        return [arg for item in self.overrides for arg in ("--set", item)]

    def env(self) -> dict[str, str]:
        """The training child's environment additions: the tracking URI, when the request names one."""
        return {"MLFLOW_TRACKING_URI": self.tracking_uri} if self.tracking_uri else {}


def _client(request: RetrainRequest):
    """``(MlflowClient, tracking URI)`` of the request (its URI, else ``$MLFLOW_TRACKING_URI``, else local SQLite),
    with viops' request budget: an unreachable server fails a step in ~30 s, as it fails the commands."""
    from mlflow import MlflowClient

    from pipelines.tracking import bound_request_time, resolve_tracking_uri

    bound_request_time()
    uri = resolve_tracking_uri(request.tracking_uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri), uri


def prepare_data(request: RetrainRequest) -> dict:
    """Step 1, as ``viops prepare`` (with the window's rows): its manifest plus ``directory``.

    Raises:
        ConfigError, DataError: the config or the data (the window's included) is bad; nothing was written.
    """
    from pipelines.config.loading import load_config, parse_overrides
    from pipelines.training.data import check_trainable, prepare

    config = load_config(request.config, parse_overrides(list(request.overrides)))
    data = prepare(config.data, extra=(request.window,) if request.window else ())
    check_trainable(data, config.model)  # what the training step would refuse, refused here already
    out = data.save(Path(request.workdir) / "prepared")
    return {**data.manifest(), "directory": str(out)}


def train_candidate(request: RetrainRequest, prepared: dict) -> dict:
    """Step 2: ``viops train --prepared --no-register [--resume]``; the training result (run id, model name,
    metrics)."""
    name = ["--run-name", request.run_name] if request.run_name else []
    # --resume: a retried step (an Airflow retry, a re-run of the same request) continues the run its first try
    # started, from that run's last checkpoint, instead of training again from step 0.
    resume = ["--resume"] if request.run_name else []  # the run name says which run a retry continues
    tags = [arg for tag in request.tags for arg in ("--tag", tag)]
    return run_viops(["train", "--config", request.config, "--prepared", prepared["directory"], "--no-register",
                      "--reason", request.reason, *resume, *name, *tags, *request._sets()], env=request.env())


def register_candidate(request: RetrainRequest, trained: dict) -> dict:
    """Step 3, as ``viops register``: the run's model becomes a version with alias ``challenger``."""
    from pipelines.registry.versions import register_run

    client, uri = _client(request)
    return {**register_run(client, trained["run_id"], trained["model_name"]).to_json(), "tracking_uri": uri}


def evaluate_candidate(request: RetrainRequest, registered: dict) -> dict:
    """Step 4, as ``viops evaluate`` against the champion: the verdict (a rejection is a verdict, not a failure).

    A re-run of a retrain whose version was promoted meanwhile finds that version registered and champion: it is
    not compared with itself, and the promotion step finds nothing to change."""
    if "champion" in registered.get("aliases", ()):
        version = str(registered["model_version"])
        return {"passed": True, "already_champion": True, "model": registered["model_name"],
                "candidate_version": version, "champion_version": version, "evaluation_run_id": None,
                "reasons": [f"version {version} is already champion: not evaluated again"]}
    from pipelines.registry.gate import evaluate

    client, uri = _client(request)
    verdict = evaluate(client, registered["model_name"], tracking_uri=uri,
                       candidate=str(registered["model_version"]))
    return {**verdict.to_json(), "tracking_uri": uri}


def promote_candidate(request: RetrainRequest, verdict: dict) -> dict:
    """Step 5, as ``viops promote`` of a version that passed the gate, with the request's reason, actor and trigger:
    the alias change (``changed`` false when the version was champion already)."""
    if not verdict["passed"]:
        raise ValueError(f"version {verdict['candidate_version']} of {verdict['model']} failed the gate; "
                         f"only a passed verdict is promoted")
    from pipelines.registry.audit import default_actor
    from pipelines.registry.promotion import promote

    client, uri = _client(request)
    change = promote(client, verdict["model"], str(verdict["candidate_version"]), reason=request.reason,
                     actor=request.actor or default_actor(), audit_log=request.audit_log,
                     trigger={**request.trigger, "evaluation_run_id": verdict["evaluation_run_id"]})
    return {**change.to_json(), "tracking_uri": uri}


def deploy_strategy(request: RetrainRequest) -> str:
    """The config's ``deploy.strategy``: ``offline`` (promote when the gate passes) or ``shadow``."""
    from pipelines.config.loading import load_config, parse_overrides

    return load_config(request.config, parse_overrides(list(request.overrides))).deploy.strategy


def next_step(request: RetrainRequest, verdict: dict) -> str:
    """After the gate: ``reject``, ``promote``, or ``deploy_live`` (``deploy.strategy`` shadow or canary; a version
    that is the champion already is not deployed again)."""
    if not verdict["passed"]:
        return "reject"
    live = deploy_strategy(request) != "offline" and not verdict.get("already_champion")
    return "deploy_live" if live else "promote"


def deploy_candidate(request: RetrainRequest, verdict: dict) -> dict:
    """Step 5 under ``deploy.strategy`` shadow or canary, as ``viops deploy start``. The version stays ``challenger``;
    the monitor scores every window with it too (and, in canary, production routes a share of rows to it), and
    promotes or rejects it on live evidence (:mod:`monitoring.shadow`)."""
    if not verdict["passed"]:
        raise ValueError(f"version {verdict['candidate_version']} of {verdict['model']} failed the gate; "
                         f"only a passed verdict is deployed live")
    from pipelines.registry.audit import default_actor
    from pipelines.registry.deployment import deploy_version

    client, uri = _client(request)
    deployment = deploy_version(client, verdict["model"], str(verdict["candidate_version"]), tracking_uri=uri,
                                reason=request.reason, actor=request.actor or default_actor())
    return {**deployment.to_json(), "tracking_uri": uri}


def retrain(request: RetrainRequest) -> dict:
    """All five steps in order. Returns ``{"run_id", "version", "rows", "verdict", "promoted", "promotion",
    "deployment"}``: the gate's verdict as ``viops evaluate`` gives it, the alias change of a promotion, and
    ``deployment``, the live stage under ``deploy.strategy`` shadow or canary.

    Raises:
        LeaseHeld: a retrain, promotion or rollback of the model is in progress; nothing was done.
        CLIError: the training child failed (the message carries its exit code and error line).
        NotRetryable: bad config or data, a refused signature, a registry request that cannot be carried out.
    """
    from pipelines.config.loading import load_config, parse_overrides
    from pipelines.registry.lease import hold

    model = load_config(request.config, parse_overrides(list(request.overrides))).model_name
    client, _ = _client(request)
    with hold(client, model, "retrain", incident=request.trigger.get("incident_id")):
        prepared = prepare_data(request)
        trained = train_candidate(request, prepared)
        registered = register_candidate(request, trained)
        verdict = evaluate_candidate(request, registered)
        step = next_step(request, verdict)
        promotion = promote_candidate(request, verdict) if step == "promote" else None
        live = deploy_candidate(request, verdict) if step == "deploy_live" else None
    return {"run_id": trained["run_id"], "version": str(registered["model_version"]),
            "rows": sum(prepared["rows"].values()),
            "verdict": verdict,
            "promoted": bool(promotion and promotion["changed"]), "promotion": promotion, "deployment": live}
