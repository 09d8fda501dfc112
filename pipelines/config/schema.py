"""The training config's schema: one pydantic model per section, validated at load, unknown keys rejected.

:class:`TrainConfig` is everything ``viops train`` needs; the ``model:`` section is in :mod:`pipelines.config.model`
and loading in :mod:`pipelines.config.loading`. docs/training.md documents every key.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from pipelines.config.base import Name, StrictModel
from pipelines.config.model import LinearRegressionConfig, ModelConfig
from pipelines.config.release import DeployConfig, GateConfig

__all__ = ["SplitConfig", "DataConfig", "FlowConfig", "GuideConfig", "EarlyStoppingConfig", "ScheduleConfig",
           "TrainSettings", "RegistryConfig", "TrackingConfig", "GateConfig", "DeployConfig", "ObjectiveConfig",
           "AmortizationConfig", "TrainConfig"]


class SplitConfig(StrictModel):
    validation: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.15
    test: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.15
    seed: int = 0

    @model_validator(mode="after")
    def _leaves_training_rows(self):
        if self.validation + self.test >= 1.0:
            raise ValueError(f"validation + test fractions must be < 1, got {self.validation} + {self.test}")
        return self


class StreamingConfig(StrictModel):
    """Training from a Parquet file or dataset folder larger than memory (``data.streaming``; docs/training.md)."""

    enabled: bool = False
    shuffle_buffer_rows: PositiveInt = 65_536  # training rows mixed across row groups before each minibatch
    sample_rows: PositiveInt = 100_000  # training rows kept in memory: reference snapshot, diagnostics
    holdout_rows: PositiveInt = 100_000  # validation and test rows kept in memory, each
    # spill: the scan copies the training rows to a temporary file (8 bytes per value) that each epoch reads in
    # blocks; false: each epoch decodes the Parquet row groups again (no extra disk, a slower reader)
    spill: bool = True


class DataConfig(StrictModel):
    """Where the data comes from: a CSV/Parquet file or a folder of Parquet files (``path``), or a scikit-learn
    bundled dataset (``sklearn``); with ``streaming.enabled`` a Parquet source is streamed instead of loaded."""

    path: str | None = None
    sklearn: Literal["diabetes", "wine", "breast_cancer", "digits"] | None = None
    target: str | None = None
    features: Annotated[list[str], Field(min_length=1)] | None = None
    split: SplitConfig = SplitConfig()
    standardize: bool = False
    streaming: StreamingConfig = StreamingConfig()

    @model_validator(mode="after")
    def _one_source(self):
        if (self.path is None) == (self.sklearn is None):
            raise ValueError("give exactly one data source: 'path' (csv or parquet) or 'sklearn' (a bundled dataset)")
        if self.path is not None and not self.target:
            raise ValueError("'target' is required with 'path': name the label column")
        if self.features and len(set(self.features)) < len(self.features):
            raise ValueError(f"features lists a column more than once: {self.features}")
        if self.streaming.enabled and (self.path is None or self.path.lower().endswith(".csv")):
            raise ValueError("data.streaming reads Parquet in row groups: give 'path' as a .parquet file or a folder "
                             "of them")
        return self


class FlowConfig(StrictModel):
    """Options of the ``flow`` family (a zuko neural spline flow; docs/families.md)."""

    transforms: PositiveInt = 3
    hidden_features: list[PositiveInt] = Field(default_factory=lambda: [32, 32], min_length=1)
    bins: Annotated[int, Field(ge=2)] = 8


class GuideConfig(StrictModel):
    """The variational family: ``mean_field | full_rank | low_rank | flow``, with its options.

    ``rank`` belongs to ``low_rank`` and ``flow`` to ``flow``; giving either to another family is an error.
    """

    family: Literal["mean_field", "full_rank", "low_rank", "flow"] = "mean_field"
    init_scale: PositiveFloat = 0.1
    # laplace: start q at the Laplace approximation (mode and SDs; init_scale is then unused) and measure its
    # parameters in those units (one L-BFGS fit and a dense Hessian before SVI; up to ~1,000 latent dims). auto: laplace
    # for linear/logistic regression (log-concave, near-Gaussian posteriors), none otherwise. docs/families.md.
    precondition: Literal["auto", "none", "laplace"] = "auto"
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


class EarlyStoppingConfig(StrictModel):
    """Stop when validation ELBO stops improving *and* the variational scales have stopped moving.

    ``patience`` counts validation checks (one every ``train.val_every_n_steps`` steps).
    """

    enabled: bool = True
    patience: PositiveInt = 10
    min_delta: Annotated[float, Field(ge=0.0)] = 1e-4
    scale_rtol: PositiveFloat = 0.01


class ScheduleConfig(StrictModel):
    """Step-size schedule over the whole run: ``cosine`` anneals ``lr`` to ``lr * final_lr_ratio``."""

    kind: Literal["cosine", "constant"] = "cosine"
    final_lr_ratio: Annotated[float, Field(gt=0.0, le=1.0)] = 0.01


class TrainSettings(StrictModel):
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
    # Validation rows the checks during training use (val_elbo, early stopping, the VAE's collapse and gap measures):
    # a larger split gives a seeded sample of this many, the same at every check. Each check evaluates
    # eval_particles draws over these rows (4,096 x 64: about 10 steps' time of the BNN at batch 4,096); the
    # final held-out metrics use the whole split.
    val_rows: PositiveInt = 4096
    khat_samples: Annotated[int, Field(ge=100)] = 1000  # draws for the PSIS k-hat at the end of training
    # Training rows the end-of-training diagnostics (PSIS k-hat, train ELBO and IWAE bound) use: a seeded sample of a
    # larger table (k-hat's draws cost khat_samples passes over these rows; its likelihood is scaled by N/n).
    diagnostic_rows: PositiveInt = 100_000
    # Lightning batches carry this many minibatches (one Adam step each), sharing Lightning's per-batch overhead.
    steps_per_batch: PositiveInt = 32
    val_every_n_steps: PositiveInt = 500
    log_step_metrics: bool = True
    # Step metrics go to MLflow as one row per this many steps (their means, nan_count summed); 1: every step.
    metrics_every_n_steps: PositiveInt = 10
    log_every_n_steps: PositiveInt = 500
    checkpoint_every_seconds: PositiveFloat = 300.0  # last.ckpt is also written when training ends or raises
    checkpoint_dir: str | None = None  # one folder per run; default $VIOPS_WORK_DIR/checkpoints (docs/training.md)
    accelerator: str = "auto"
    devices: int | str = "auto"
    cuda_graph: bool = True  # one CUDA device: replay the training step as a CUDA graph (docs/training.md#cuda-graphs)
    # ddp: one process per device (Lightning's DDP; gloo on CPU, NCCL on GPU); each rank takes its own shard of every
    # epoch's permutation and gradients are averaged, so the N/|B| scaling stays that of the full data. Needs
    # steps_per_batch: 1. docs/training.md#multiple-devices
    strategy: Literal["auto", "ddp"] = "auto"
    # Nodes (hosts) training together under ddp, each running `viops train` with MASTER_ADDR, MASTER_PORT and
    # NODE_RANK set (torchrun, a PyTorchJob, one pod per node); `devices` is per node. docs/training.md#several-nodes
    num_nodes: PositiveInt = 1
    # Progress on stderr: a bar redrawn in place on a terminal; elsewhere (Airflow task logs) one status line every
    # status_every_seconds. docs/training.md#progress
    progress_bar: bool = True
    status_every_seconds: PositiveFloat = 30.0

    @model_validator(mode="after")
    def _ddp_settings(self):
        if self.strategy == "ddp":
            if not isinstance(self.devices, int) or self.devices < 1:
                raise ValueError(f"strategy ddp needs devices as a number of processes, got {self.devices!r}")
            if self.steps_per_batch != 1:
                raise ValueError("strategy ddp needs steps_per_batch: 1 (DDP expects one backward per forward)")
        elif self.num_nodes > 1:
            raise ValueError(f"num_nodes {self.num_nodes} needs strategy: ddp")
        return self

    @property
    def world_size(self) -> int:
        """Training processes: ``devices`` on each of ``num_nodes`` nodes under DDP, else 1."""
        return int(self.devices) * self.num_nodes if self.strategy == "ddp" else 1


class RegistryConfig(StrictModel):
    """Registration after training: the new version becomes ``challenger``. ``promote_first``: when the model has no
    champion yet, the version becomes champion if it passes the gate's absolute thresholds (docs/lifecycle.md)."""

    model_name: Name | None = None
    auto_register: bool = True
    promote_first: bool = True
    predictive_samples: PositiveInt = 500


class TrackingConfig(StrictModel):
    experiment: Name | None = None


class ObjectiveConfig(StrictModel):
    """What SVI maximises (docs/training.md).

    ``elbo`` is the evidence lower bound. ``iwae`` is the importance-weighted bound with ``iwae_samples`` draws per
    row (Burda, Grosse & Salakhutdinov 2016): tighter than the ELBO, and at least as tight with more samples.
    ``kl_warmup_steps`` scales the KL term by a weight rising linearly from 0 to 1 over that many steps (Bowman et al.
    2016); ``free_bits`` (nats per latent dimension) leaves each dimension's minibatch-average KL unpenalised below
    that floor (Kingma et al. 2016). Both fight posterior collapse. ``iwae`` and ``free_bits`` act on per-row
    latents, so they need an amortized model (``model.kind: vae``); the logged ``elbo`` is always the plain ELBO.
    """

    kind: Literal["elbo", "iwae"] = "elbo"
    iwae_samples: Annotated[int, Field(ge=2)] = 8
    kl_warmup_steps: Annotated[int, Field(ge=0)] = 0
    free_bits: Annotated[float, Field(ge=0.0)] = 0.0

    @property
    def name(self) -> str:
        """A short label for the ``viops.objective`` tag, e.g. ``iwae-k8+warmup+free_bits``."""
        label = f"iwae-k{self.iwae_samples}" if self.kind == "iwae" else "elbo"
        if self.kl_warmup_steps:
            label += "+kl_warmup"
        if self.free_bits:
            label += "+free_bits"
        return label


class AmortizationConfig(StrictModel):
    """Amortized-model diagnostics, measured at validation on a fixed subsample of validation rows
    (docs/models.md#the-vae).

    The amortization gap refines each row's encoder output for ``refine_steps`` Adam steps with the decoder frozen
    (Cremer, Li & Duvenaud 2018); log p(x) is estimated with an IWAE bound of ``log_marginal_samples`` draws. The
    defaults keep the cost under 10% of training time.
    """

    subsample: PositiveInt = 64
    refine_steps: PositiveInt = 50
    refine_lr: PositiveFloat = 0.05
    log_marginal_samples: Annotated[int, Field(ge=2)] = 256
    every_n_validations: PositiveInt = 2
    active_unit_threshold: PositiveFloat = 0.01  # Burda et al. 2016: Var_x E_q[z_d | x] above this is "active"


class TrainConfig(StrictModel):
    """Everything ``viops train`` needs. ``data.path`` is already resolved to an absolute path."""

    name: Name
    data: DataConfig
    model: ModelConfig = Field(default_factory=LinearRegressionConfig)
    guide: GuideConfig = GuideConfig()
    objective: ObjectiveConfig = ObjectiveConfig()
    amortization: AmortizationConfig = AmortizationConfig()
    train: TrainSettings = TrainSettings()
    registry: RegistryConfig = RegistryConfig()
    tracking: TrackingConfig = TrackingConfig()
    gate: GateConfig = GateConfig()
    deploy: DeployConfig = DeployConfig()

    @model_validator(mode="after")
    def _sections_agree(self):
        model, guide, objective = self.model, self.guide, self.objective
        if isinstance(model, LinearRegressionConfig) and self.data.standardize and not model.fit_intercept:
            raise ValueError("data.standardize centres the data, which needs model.fit_intercept: true")
        if model.kind == "vae":
            if self.data.standardize:
                raise ValueError("model.kind vae models the raw feature counts; set data.standardize: false")
            if guide.family != "mean_field" or guide.precondition == "laplace":
                raise ValueError("model.kind vae has an amortized diagonal-Gaussian encoder: "
                                 "use guide.family: mean_field and guide.precondition: none")
            if objective.kind == "iwae" and objective.free_bits:
                raise ValueError("objective.free_bits applies to the ELBO's KL term; the iwae bound has none")
        elif objective.kind == "iwae" or objective.free_bits or objective.kl_warmup_steps:
            raise ValueError(f"objective.kind iwae, free_bits and kl_warmup_steps act on per-row latents and need "
                             f"model.kind: vae, not {model.kind}")
        if self.data.streaming.enabled and (guide.precondition == "laplace" or self.train.world_size > 1):
            raise ValueError("data.streaming trains in one process from row groups: it takes no "
                             "guide.precondition: laplace (a Hessian over every row) and no DDP (train.strategy)")
        if getattr(model, "local_reparameterization", False) and guide.family != "mean_field":
            raise ValueError(f"model.local_reparameterization needs guide.family: mean_field, not {guide.family}")
        return self

    @property
    def model_name(self) -> str:
        return self.registry.model_name or self.name

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment or self.name
