"""The ``model`` section of the training config: one schema per model kind, chosen by ``model.kind``.

Kinds: ``bayesian_linear_regression`` (the default when ``kind`` is left out), ``bayesian_logistic_regression``
(logistic for two classes, softmax for more), ``bayesian_neural_network`` (Bayes by Backprop, regression or
classification) and ``vae`` (a variational autoencoder with an amortized Gaussian encoder). Keys of one kind given to
another are errors, like any unknown key.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import (
    Discriminator,
    Field,
    PositiveFloat,
    PositiveInt,
    Tag,
    TypeAdapter,
    model_validator,
)

from pipelines.config.base import StrictModel

__all__ = [
    "NormalPrior",
    "StudentTPrior",
    "CauchyPrior",
    "HalfStudentTPrior",
    "FlatPrior",
    "CoefficientPrior",
    "NoiseScalePrior",
    "NoiseConfig",
    "PriorConfig",
    "LinearRegressionConfig",
    "LogisticRegressionConfig",
    "NeuralNetworkConfig",
    "VAEConfig",
    "ModelConfig",
    "MODEL_KINDS",
    "validate_model_config",
]


class NormalPrior(StrictModel):
    loc: float = 0.0
    scale: PositiveFloat = 1.0


class StudentTPrior(StrictModel):
    df: PositiveFloat = 3.0
    loc: float = 0.0
    scale: PositiveFloat = 1.0


class CauchyPrior(StrictModel):
    loc: float = 0.0
    scale: PositiveFloat = 1.0


class ScaleOnly(StrictModel):
    scale: PositiveFloat = 1.0


class HalfStudentTPrior(StrictModel):
    df: PositiveFloat = 3.0
    scale: PositiveFloat = 1.0


class FlatPrior(StrictModel):
    pass


class _OneOf(StrictModel):
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


class NoiseConfig(StrictModel):
    """Observation noise: ``{fixed: 0.3}`` or ``{learned: {half_normal: {scale: 1.0}}}``."""

    fixed: PositiveFloat | None = None
    learned: NoiseScalePrior | None = None

    @model_validator(mode="after")
    def _exactly_one(self):
        if (self.fixed is None) == (self.learned is None):
            raise ValueError("give exactly one of 'fixed' (a positive noise scale) or 'learned' (a prior on it)")
        return self


def _learned_noise() -> NoiseConfig:
    return NoiseConfig(learned=NoiseScalePrior(half_normal=ScaleOnly()))


class PriorConfig(StrictModel):
    weights: CoefficientPrior = CoefficientPrior(normal=NormalPrior())
    intercept: CoefficientPrior = CoefficientPrior(normal=NormalPrior(scale=10.0))


class LinearRegressionConfig(StrictModel):
    """``y ~ Normal(x @ weights + intercept, noise_scale)``."""

    kind: Literal["bayesian_linear_regression"] = "bayesian_linear_regression"
    prior: PriorConfig = PriorConfig()
    noise: NoiseConfig = Field(default_factory=_learned_noise)
    fit_intercept: bool = True  # false: y = x @ weights + noise (prior.intercept is then unused)

    task: ClassVar[str] = "regression"


class LogisticRegressionConfig(StrictModel):
    """``y ~ Categorical(softmax(x @ W + b))`` over class indices ``0..C-1``; for two classes, logistic regression
    (one weight vector). ``num_classes`` is read from the training labels when left out."""

    kind: Literal["bayesian_logistic_regression"] = "bayesian_logistic_regression"
    prior: PriorConfig = PriorConfig()
    num_classes: Annotated[int, Field(ge=2)] | None = None

    task: ClassVar[str] = "classification"


class NeuralNetworkConfig(StrictModel):
    """A Bayesian MLP trained by Bayes by Backprop (Blundell et al. 2015): a prior on every weight and bias.

    ``local_reparameterization`` samples each layer's pre-activations instead of its weights (Kingma, Salimans &
    Welling 2015): the same ELBO with lower-variance gradients; it needs ``guide.family: mean_field`` and a normal
    weight prior.
    """

    kind: Literal["bayesian_neural_network"] = "bayesian_neural_network"
    task: Literal["regression", "classification"] = "regression"
    hidden: list[PositiveInt] = Field(default_factory=lambda: [32], min_length=1)
    activation: Literal["tanh", "relu"] = "tanh"
    prior: CoefficientPrior = CoefficientPrior(normal=NormalPrior())
    noise: NoiseConfig | None = None  # regression only; default: learned with a half-normal(1) prior
    num_classes: Annotated[int, Field(ge=2)] | None = None  # classification only; default: from the labels
    local_reparameterization: bool = False

    @model_validator(mode="after")
    def _head_matches_task(self):
        if self.task == "classification" and self.noise is not None:
            raise ValueError("'noise' is a regression option; a classifier has none")
        if self.task == "regression" and self.num_classes is not None:
            raise ValueError("'num_classes' is a classification option; set task: classification")
        if self.local_reparameterization and self.prior.kind != "normal":
            raise ValueError(f"local_reparameterization needs a normal weight prior, got {self.prior.kind}")
        return self

    @property
    def noise_or_default(self) -> NoiseConfig:
        return self.noise or _learned_noise()


class VAEConfig(StrictModel):
    """A variational autoencoder (Kingma & Welling 2014) of the feature columns; the target column is not modelled.

    The encoder is amortized: one MLP maps each row to a diagonal Gaussian ``q(z | x)``. The decoder maps z to the
    likelihood of the row: ``binomial`` for counts in ``0..total_count`` (sklearn's digits: pixel intensities 0..16)
    or ``bernoulli`` for 0/1 data. ``decoder: autoregressive`` lets each feature also depend on the earlier ones (a
    MADE network): a decoder strong enough to model the data without z, the classic recipe for posterior collapse.
    """

    kind: Literal["vae"] = "vae"
    latent_dim: PositiveInt = 8
    encoder_hidden: list[PositiveInt] = Field(default_factory=lambda: [128], min_length=1)
    decoder_hidden: list[PositiveInt] = Field(default_factory=lambda: [128], min_length=1)
    decoder: Literal["factorized", "autoregressive"] = "factorized"
    likelihood: Literal["binomial", "bernoulli"] = "binomial"
    total_count: PositiveInt = 16  # binomial trials per feature

    task: ClassVar[str] = "density"

    @property
    def max_count(self) -> int:
        """The largest value a feature may take: ``total_count`` (binomial) or 1 (Bernoulli)."""
        return self.total_count if self.likelihood == "binomial" else 1


def _model_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("kind", "bayesian_linear_regression")
    return getattr(value, "kind", None)


ModelConfig = Annotated[
    Union[
        Annotated[LinearRegressionConfig, Tag("bayesian_linear_regression")],
        Annotated[LogisticRegressionConfig, Tag("bayesian_logistic_regression")],
        Annotated[NeuralNetworkConfig, Tag("bayesian_neural_network")],
        Annotated[VAEConfig, Tag("vae")],
    ],
    Discriminator(_model_kind, custom_error_type="model_kind",
                  custom_error_message="unknown model kind; allowed: bayesian_linear_regression, "
                  "bayesian_logistic_regression, bayesian_neural_network, vae"),
]


MODEL_KINDS = ("bayesian_linear_regression", "bayesian_logistic_regression", "bayesian_neural_network", "vae")


_ADAPTER: TypeAdapter = TypeAdapter(ModelConfig)


def validate_model_config(raw: dict) -> LinearRegressionConfig | LogisticRegressionConfig | NeuralNetworkConfig | VAEConfig:
    """Validate a ``model`` section (a dict, e.g. read back from a saved model) into its kind's schema."""
    return _ADAPTER.validate_python(raw)
