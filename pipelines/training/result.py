"""What a training run hands back: its result, or the failure that marked the MLflow run FAILED."""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.errors import NotRetryable

__all__ = ["TrainingFailed", "TrainingResult", "DDP_RUN_ID_ENV"]

#: Set by rank 0 before a DDP fit, read by the processes Lightning launches for the other devices.
DDP_RUN_ID_ENV = "VIOPS_DDP_RUN_ID"


class TrainingFailed(RuntimeError, NotRetryable):
    """Training ran but did not produce a usable posterior; the MLflow run is marked FAILED."""

    def __init__(self, message: str, run_id: str | None = None):
        super().__init__(message)
        self.run_id = run_id


@dataclass(frozen=True)
class TrainingResult:
    """What a successful training run produced (the ``--json`` output of ``viops train``).

    Attributes:
        run_id, experiment_id, tracking_uri: where the run lives in MLflow.
        model_name: the registered model name.
        model_version: the registered version, or None when registration was off.
        aliases: registry aliases now on that version.
        metrics: final metrics (validation ELBO per datum, predictive NLL, steps, seconds, ...).
        data_fingerprint: content hash of the training data.
    """

    run_id: str
    experiment_id: str
    tracking_uri: str
    model_name: str
    model_version: str | None
    aliases: tuple[str, ...]
    metrics: dict[str, float]
    data_fingerprint: str
    stopped_reason: str = ""
    registration: str = ""
    #: The DDP rank that returned this (workers > 0 train but log nothing; rank 0 logs, evaluates and registers).
    rank: int = 0
    #: The step of the checkpoint a resumed run continued from (``viops train --resume``); None for a new run.
    resumed_from_step: int | None = None
    #: Why the gate kept a model's first version from becoming champion (its reasons, first first); empty when
    #: the gate passed it or was not asked (the model already had a champion, or registration was off).
    gate_rejection: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return {
            "run_id": self.run_id,
            "experiment_id": self.experiment_id,
            "tracking_uri": self.tracking_uri,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "aliases": list(self.aliases),
            "metrics": self.metrics,
            "data_fingerprint": self.data_fingerprint,
            "stopped_reason": self.stopped_reason,
            "registration": self.registration,
            "resumed_from_step": self.resumed_from_step,
            "gate_rejection": list(self.gate_rejection),
        }
