"""Train a config and bring the result into the registry: the run, its version as ``challenger``, and the first
champion when the model has none.

This is what ``viops train`` does. The fit itself is :func:`pipelines.training.run.run_training`; registration is
:func:`pipelines.registry.versions.register_run`; a model without a champion gets its first version promoted if it
passes the gate's absolute thresholds (``registry.promote_first``; docs/lifecycle.md).
"""

from __future__ import annotations

import dataclasses

from pipelines.config.schema import TrainConfig
from pipelines.training.data import PreparedData
from pipelines.training.result import TrainingResult
from pipelines.training.run import run_training

__all__ = ["train"]


def train(
    config: TrainConfig,
    *,
    prepared: PreparedData | None = None,
    tracking_uri: str | None = None,
    register: bool | None = None,
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
    resume: bool = False,
) -> TrainingResult:
    """Train ``config`` by minibatch SVI, log everything to MLflow, and register the model.

    ``register``: None follows ``registry.auto_register``. ``resume``: continue the newest unfinished run of the
    config instead of starting a new one, when one left a checkpoint (:func:`pipelines.training.run.run_training`).

    Raises:
        DataError: the data is missing or invalid (before any MLflow run is created).
        TrainingFailed: training diverged (NaN/inf); the run is FAILED and nothing is registered.
    """
    result = run_training(config, prepared=prepared, tracking_uri=tracking_uri, run_name=run_name, tags=tags,
                          resume=resume)
    if result.rank or not (config.registry.auto_register if register is None else register):
        return result
    from mlflow import MlflowClient

    from pipelines.registry.versions import register_run

    client = MlflowClient(tracking_uri=result.tracking_uri, registry_uri=result.tracking_uri)
    reg = register_run(client, result.run_id, config.model_name)
    result = dataclasses.replace(result, model_version=reg.version, aliases=tuple(reg.aliases),
                                 registration=reg.reason)
    if config.registry.promote_first:
        result = _first_champion(client, config, result)
    return result


def _first_champion(client, config: TrainConfig, result: TrainingResult) -> TrainingResult:
    """A model without a champion: its first version becomes champion if it passes the gate's absolute thresholds."""
    from pipelines.registry.audit import default_actor
    from pipelines.registry.gate import evaluate
    from pipelines.registry.promotion import promote
    from pipelines.registry.versions import CHAMPION, alias_version

    if alias_version(client, config.model_name, CHAMPION) is not None:
        return result
    verdict = evaluate(client, config.model_name, tracking_uri=result.tracking_uri,
                       candidate=str(result.model_version), gate=config.gate)
    if not verdict.passed:
        note = f"{result.registration}; not promoted: the gate rejected it ({'; '.join(verdict.reasons)})"
        return dataclasses.replace(result, registration=note, gate_rejection=tuple(verdict.reasons))
    change = promote(client, config.model_name, str(result.model_version), actor=default_actor(),
                     reason="first model: no champion; passed the gate's absolute thresholds",
                     trigger={"run_id": result.run_id})
    version = client.get_model_version(config.model_name, str(result.model_version))
    return dataclasses.replace(result, aliases=tuple(sorted(version.aliases)),
                               registration=f"{result.registration}; {change.message}")
