"""The posterior bundle: everything needed to rebuild a fitted posterior outside the training process.

``posterior.pt`` (logged with the run and inside the pyfunc model) holds the model and guide config, the variational
parameters, the feature order and the standardisation of the training data. :attr:`PosteriorBundle.task` says what
kind of prediction the version makes, typed, so the gate, evaluation, the pyfunc and monitoring do not re-derive it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal

import torch

__all__ = ["PosteriorBundle", "Task"]


@dataclass(frozen=True)
class Task:
    """What a version predicts.

    Attributes:
        kind: ``regression`` (a Gaussian predictive of the target), ``classification`` (class probabilities), or
            ``amortized`` (the VAE: a per-row posterior ``q(z | x)`` and ``log p(x)``; no target).
        likelihood: ``gaussian``, ``categorical``, or the VAE's ``bernoulli`` / ``binomial``.
        num_classes: classes of a classifier, else None.
        max_count: the largest value a VAE feature may take (``total_count`` of a binomial, 1 of a Bernoulli).
    """

    kind: Literal["regression", "classification", "amortized"]
    likelihood: str
    num_classes: int | None = None
    max_count: int | None = None

    @property
    def has_target(self) -> bool:
        """Whether the model predicts a label column (the VAE models its features only)."""
        return self.kind != "amortized"


@dataclass
class PosteriorBundle:
    """Everything needed to rebuild the fitted posterior outside the training process."""

    model_config: dict
    guide_config: dict
    family_state: dict  # the variational family's parameters (for an amortized model: encoder and decoder weights)
    features: list[str]
    target: str
    num_classes: int | None = None  # classifiers only
    feature_mean: list[float] = field(default_factory=list)
    feature_scale: list[float] = field(default_factory=list)
    target_mean: float = 0.0
    target_scale: float = 1.0
    predictive_samples: int = 500
    seed: int = 0
    train_rows: int = 0  # N of the training split (the KL term of a per-datum ELBO); 0 in bundles that predate it

    @cached_property
    def model_spec(self):
        """The model section of the training config, validated (the typed twin of ``model_config``)."""
        from pipelines.config.model import validate_model_config

        return validate_model_config(self.model_config)

    @property
    def task(self) -> Task:
        spec = self.model_spec
        if spec.kind == "vae":
            return Task("amortized", spec.likelihood, max_count=spec.max_count)
        if self.num_classes is not None:
            return Task("classification", "categorical", num_classes=self.num_classes)
        return Task("regression", "gaussian")

    def save(self, path: str | Path) -> Path:
        torch.save(asdict(self), path)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> PosteriorBundle:
        return cls(**torch.load(path, map_location="cpu", weights_only=True))

    def rebuild(self):
        """Return ``(model, family)`` with the fitted parameters loaded; ``family`` is None for amortized models."""
        from pipelines.build import build_family, build_model
        from pipelines.config.schema import GuideConfig

        model = build_model(self.model_spec, len(self.features), self.num_classes)
        if self.task.kind == "amortized":
            model.load_state_dict(self.family_state)
            return model.eval(), None
        family = build_family(GuideConfig.model_validate(self.guide_config), model.latent_dim)
        family.load_state_dict(self.family_state)
        family.eval()
        return model, family
