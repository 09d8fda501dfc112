"""The LightningModule of amortized models (the VAE): encoder and decoder trained together on the configured bound.

Telemetry matches the global-latent models where the quantity is the same (``elbo``, ``expected_log_likelihood`` and
``kl`` as full-data estimates per step; ``val_elbo`` and ``val_predictive_nll`` per datum from the same
``eval_particles`` draws of each row's z: the mean of their importance log-weights, and ``-log p̂(x)`` from their IWAE
bound), and adds the posterior-collapse measures (``val_active_units``, ``val_kl_dim/<d>``).
"""

from __future__ import annotations

import torch

from models.amortized import amortized_bound, collapse_statistics, importance_log_weights, log_mean_exp
from pipelines.config.schema import ObjectiveConfig, TrainSettings
from pipelines.training.svi_module import MinibatchSVI

__all__ = ["AmortizedSVIModule"]


class AmortizedSVIModule(MinibatchSVI):
    """Amortized SVI: encoder and decoder are trained together on the configured bound.

    Args:
        model: an amortized ``models/`` model (``encode``, ``log_likelihood``, ``prior``), an ``nn.Module``.
        objective: the ``objective`` section (ELBO or IWAE, KL warm-up, free bits).
        settings, train_xy, val_xy: as for :class:`~pipelines.lightning_module.MinibatchSVI`.
        active_unit_threshold: ``Var_x E_q[z_d | x]`` above which a latent dimension counts as active.
    """

    def __init__(self, model, objective: ObjectiveConfig, settings: TrainSettings, train_xy, val_xy=None, *,
                 active_unit_threshold: float = 0.01, train_stream=None):
        normalised = train_stream is None and hasattr(model, "log_normaliser")
        if normalised:
            # The training table's second column (the target, unused by the bound) becomes each row's normaliser,
            # computed once here instead of in every step's bound.
            train_xy = (train_xy[0], model.log_normaliser(train_xy[0]))
        super().__init__(settings, train_xy, val_xy, train_stream)
        self.model, self.objective = model, objective
        self.normalised = normalised
        self.active_unit_threshold = active_unit_threshold
        self.samples = objective.iwae_samples if objective.kind == "iwae" else settings.num_particles

    def trained_parameters(self):
        return self.model.named_parameters()

    def _graph_capturable(self) -> bool:
        return not self.objective.kl_warmup_steps  # the KL weight is a host value that changes every warm-up step

    def kl_weight(self) -> float:
        """The KL annealing weight at this step: linear from 0 to 1 over ``kl_warmup_steps``, then 1."""
        warmup = self.objective.kl_warmup_steps
        return min(1.0, self.global_step / warmup) if warmup else 1.0

    def _shared_step(self, batch, stage: str) -> torch.Tensor:
        x, second = batch
        n = self.dataset_size
        if stage == "train":
            beta = self.kl_weight()
            terms = amortized_bound(self.model, x, kind=self.objective.kind, num_samples=self.samples,
                                    kl_weight=beta, free_bits=self.objective.free_bits,
                                    normaliser=second if self.normalised else None)
            stats = {
                "elbo": terms.elbo.detach() * n,
                "expected_log_likelihood": terms.expected_log_likelihood.detach() * n,
                "kl": terms.kl.detach() * n,
            }
            if self.objective.kind != "elbo" or self.objective.free_bits or self.objective.kl_warmup_steps:
                stats["objective"] = terms.objective.detach() * n
            if self.objective.kl_warmup_steps:
                stats["kl_weight"] = torch.tensor(beta, device=x.device)
            self._set_step_stats(stats)
            return -terms.objective
        # One encoding and one set of eval_particles draws give all three: the ELBO is the mean of the importance
        # log-weights, -log p(x) their log-mean-exp (the IWAE bound), and the collapse measures need only q.
        q = self.model.encode(x)
        log_weights = importance_log_weights(self.model, x, self.settings.eval_particles, q=q)
        elbo = log_weights.mean()
        nll = -log_mean_exp(log_weights).mean()
        collapse = collapse_statistics(self.model, x, self.active_unit_threshold, q=q)
        values = {"val_elbo": elbo, "val_predictive_nll": nll, "val_active_units": collapse.active_units,
                  "val_posterior_sd_mean": collapse.posterior_sd_mean}
        values.update((f"val_kl_dim/{d}", v) for d, v in enumerate(collapse.kl_per_dim.tolist()))
        self._log_validation(values, x.shape[0])
        return elbo
