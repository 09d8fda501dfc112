"""The training configuration: one pydantic model, validated at load, unknown keys rejected.

``load_config(path, overrides)`` reads YAML, applies ``--set dotted.key=value`` overrides, validates, and resolves
``data.path`` relative to the config file. Every error names the file and the dotted key that is wrong.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, ValidationError, model_validator

__all__ = ["ConfigError", "TrainConfig", "load_config", "parse_overrides", "config_hash"]


class ConfigError(ValueError):
    """The configuration is invalid; the message names the file and key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- priors -------------------------------------------------------------------------------------------------------


class NormalPrior(_Strict):
    loc: float = 0.0
    scale: PositiveFloat = 1.0


class StudentTPrior(_Strict):
    df: PositiveFloat = 3.0
    loc: float = 0.0
    scale: PositiveFloat = 1.0


class CauchyPrior(_Strict):
    loc: float = 0.0
    scale: PositiveFloat = 1.0


class ScaleOnly(_Strict):
    scale: PositiveFloat = 1.0


class HalfStudentTPrior(_Strict):
    df: PositiveFloat = 3.0
    scale: PositiveFloat = 1.0


class FlatPrior(_Strict):
    pass


class _OneOf(_Strict):
    """Exactly one field is set: the prior family, holding its parameters."""

    @model_validator(mode="after")
    def _exactly_one(self):
        chosen = [name for name in type(self).model_fields if getattr(self, name) is not None]
        if len(chosen) != 1:
            allowed = ", ".join(type(self).model_fields)
            raise ValueError(f"give exactly one prior family (allowed: {allowed}); got {chosen or 'none'}")
        return self

    @property
    def kind(self) -> str:
        return next(name for name in type(self).model_fields if getattr(self, name) is not None)

    @property
    def params(self) -> dict[str, float]:
        return getattr(self, self.kind).model_dump()


class CoefficientPrior(_OneOf):
    """Prior on a real coefficient, e.g. ``{normal: {loc: 0.0, scale: 1.0}}``."""

    normal: NormalPrior | None = None
    student_t: StudentTPrior | None = None
    cauchy: CauchyPrior | None = None
    flat: FlatPrior | None = None


class NoiseScalePrior(_OneOf):
    """Prior on a positive scale, e.g. ``{half_normal: {scale: 1.0}}``."""

    half_normal: ScaleOnly | None = None
    half_cauchy: ScaleOnly | None = None
    half_student_t: HalfStudentTPrior | None = None
    flat: FlatPrior | None = None


# --- sections -----------------------------------------------------------------------------------------------------


class SplitConfig(_Strict):
    validation: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.15
    test: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.15
    seed: int = 0

    @model_validator(mode="after")
    def _leaves_training_rows(self):
        if self.validation + self.test >= 1.0:
            raise ValueError(f"validation + test fractions must be < 1, got {self.validation} + {self.test}")
        return self


class DataConfig(_Strict):
    """Where the data comes from: a CSV/Parquet file (``path``) or a scikit-learn bundled dataset (``sklearn``)."""

    path: str | None = None
    sklearn: Literal["diabetes", "wine", "breast_cancer", "digits"] | None = None
    target: str | None = None
    features: list[str] | None = None
    split: SplitConfig = SplitConfig()
    standardize: bool = False

    @model_validator(mode="after")
    def _one_source(self):
        if (self.path is None) == (self.sklearn is None):
            raise ValueError("give exactly one data source: 'path' (csv or parquet) or 'sklearn' (a bundled dataset)")
        if self.path is not None and not self.target:
            raise ValueError("'target' is required with 'path': name the label column")
        return self


class NoiseConfig(_Strict):
    """Observation noise: ``{fixed: 0.3}`` or ``{learned: {half_normal: {scale: 1.0}}}``."""

    fixed: PositiveFloat | None = None
    learned: NoiseScalePrior | None = None

    @model_validator(mode="after")
    def _exactly_one(self):
        if (self.fixed is None) == (self.learned is None):
            raise ValueError("give exactly one of 'fixed' (a positive noise scale) or 'learned' (a prior on it)")
        return self


class PriorConfig(_Strict):
    weights: CoefficientPrior = CoefficientPrior(normal=NormalPrior())
    intercept: CoefficientPrior = CoefficientPrior(normal=NormalPrior(scale=10.0))


class ModelConfig(_Strict):
    kind: Literal["bayesian_linear_regression"] = "bayesian_linear_regression"
    prior: PriorConfig = PriorConfig()
    noise: NoiseConfig = NoiseConfig(learned=NoiseScalePrior(half_normal=ScaleOnly()))
    fit_intercept: bool = True  # false: y = x @ weights + noise (prior.intercept is then unused)


class FlowConfig(_Strict):
    """Options of the ``flow`` family (a zuko neural spline flow; docs/families.md)."""

    transforms: PositiveInt = 3
    hidden_features: list[PositiveInt] = Field(default_factory=lambda: [32, 32], min_length=1)
    bins: Annotated[int, Field(ge=2)] = 8


class GuideConfig(_Strict):
    """The variational family: ``mean_field | full_rank | low_rank | flow``, with its options.

    ``rank`` belongs to ``low_rank`` and ``flow`` to ``flow``; giving either to another family is an error.
    """

    family: Literal["mean_field", "full_rank", "low_rank", "flow"] = "mean_field"
    init_scale: PositiveFloat = 0.1
    # laplace: start q at the Laplace approximation (mode and SDs; init_scale is then unused) and measure its
    # parameters in those units (one L-BFGS fit and a dense Hessian before SVI; up to ~1,000 latent dims).
    # docs/families.md.
    precondition: Literal["none", "laplace"] = "none"
    rank: PositiveInt | None = None
    flow: FlowConfig | None = None

    @model_validator(mode="after")
    def _options_match_family(self):
        if self.rank is not None and self.family != "low_rank":
            raise ValueError(f"'rank' is an option of the low_rank family, not of {self.family}")
        if self.flow is not None and self.family != "flow":
            raise ValueError(f"'flow' options belong to the flow family, not to {self.family}")
        return self

    def family_options(self) -> dict[str, Any]:
        """Keyword arguments of :func:`models.families.make_family` for this family."""
        options: dict[str, Any] = {"init_scale": self.init_scale}
        if self.family == "low_rank":
            options["rank"] = self.rank or 2
        if self.family == "flow":
            options.update((self.flow or FlowConfig()).model_dump())
        return options


class EarlyStoppingConfig(_Strict):
    """Stop when validation ELBO stops improving *and* the variational scales have stopped moving.

    ``patience`` counts validation checks (one every ``train.val_every_n_steps`` steps).
    """

    enabled: bool = True
    patience: PositiveInt = 10
    min_delta: Annotated[float, Field(ge=0.0)] = 1e-4
    scale_rtol: PositiveFloat = 0.01


class ScheduleConfig(_Strict):
    """Step-size schedule over the whole run: ``cosine`` anneals ``lr`` to ``lr * final_lr_ratio``."""

    kind: Literal["cosine", "constant"] = "cosine"
    final_lr_ratio: Annotated[float, Field(gt=0.0, le=1.0)] = 0.01


class TrainSettings(_Strict):
    """Optimisation settings. The defaults get mean-field BLR posteriors right without tuning (docs/training.md)."""

    batch_size: PositiveInt = 256
    max_epochs: PositiveInt = 30
    lr: PositiveFloat = 0.01
    # A short second-moment memory lets Adam's step follow the shrinking scale gradients as q tightens.
    betas: tuple[Annotated[float, Field(ge=0.0, lt=1.0)], Annotated[float, Field(ge=0.0, lt=1.0)]] = (0.9, 0.9)
    seed: int = 0
    num_particles: PositiveInt = 2
    antithetic: bool = True  # mirrored particle pairs; used with families symmetric about their mean (not flow)
    schedule: ScheduleConfig = ScheduleConfig()
    average_last: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.25
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    gradient_clip_val: PositiveFloat | None = None
    eval_particles: PositiveInt = 64
    khat_samples: Annotated[int, Field(ge=100)] = 1000  # draws for the PSIS k-hat at the end of training
    # Lightning batches carry this many minibatches (one Adam step each), sharing Lightning's per-batch overhead.
    steps_per_batch: PositiveInt = 32
    val_every_n_steps: PositiveInt = 500
    log_step_metrics: bool = True
    log_every_n_steps: PositiveInt = 500
    checkpoint_every_seconds: PositiveFloat = 300.0  # last.ckpt is also written when training ends
    accelerator: str = "auto"
    devices: int | str = "auto"
    progress_bar: bool = True


class RegistryConfig(_Strict):
    model_name: str | None = None
    auto_register: bool = True
    predictive_samples: PositiveInt = 500


class TrackingConfig(_Strict):
    experiment: str | None = None


class TrainConfig(_Strict):
    """Everything ``viops train`` needs. ``data.path`` is already resolved to an absolute path."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")]
    data: DataConfig
    model: ModelConfig = ModelConfig()
    guide: GuideConfig = GuideConfig()
    train: TrainSettings = TrainSettings()
    registry: RegistryConfig = RegistryConfig()
    tracking: TrackingConfig = TrackingConfig()

    @model_validator(mode="after")
    def _intercept_with_standardized_data(self):
        if self.data.standardize and not self.model.fit_intercept:
            raise ValueError("data.standardize centres the data, which needs model.fit_intercept: true")
        return self

    @property
    def model_name(self) -> str:
        return self.registry.model_name or self.name

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment or self.name


# --- loading ------------------------------------------------------------------------------------------------------


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """Parse ``["train.lr=0.001", ...]`` into ``{"train.lr": 0.001}``; values are read as YAML scalars."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected dotted.key=value")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: value is not valid YAML: {exc}") from None
    return out


def _apply_override(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for depth, key in enumerate(keys[:-1]):
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: {'.'.join(keys[: depth + 1])} is a value, not a section")
        node = child
    node[keys[-1]] = value


def _format_validation_error(source: str, exc: ValidationError) -> str:
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (not part of the config schema)"
        elif "input" in err and err["type"] not in ("missing",) and not isinstance(err["input"], dict):
            msg = f"{msg} (got {err['input']!r})"
        problems.append(f"{where}: {msg}")
    return f"invalid config {source}: " + "; ".join(problems)


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Load, override, validate and resolve a training config.

    Raises:
        ConfigError: the file is missing or unreadable, or any key is unknown or out of range.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {exc}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path} must be a mapping at the top level, got {type(raw).__name__}")
    for key, value in (overrides or {}).items():
        _apply_override(raw, key, value)
    data = raw.get("data")
    if isinstance(data, dict) and isinstance(data.get("path"), str):
        data_path = Path(data["path"])
        if not data_path.is_absolute():
            data["path"] = str((path.parent / data_path).resolve())
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(str(path), exc)) from None


def config_hash(config: TrainConfig) -> str:
    """A short stable hash of the resolved config (keys sorted), for tagging runs."""
    blob = json.dumps(config.model_dump(mode="json"), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
