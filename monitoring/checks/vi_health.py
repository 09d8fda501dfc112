"""The champion's variational fit on a window: ELBO per datum and predictive NLL against its held-out baseline
(labelled rows), a label-free uncertainty shift and single-row scoring latency. Regression uses the mean predictive
SD; classifiers use mean entropy and epistemic mutual information. Amortized models add the amortization gap
(Cremer, Li & Duvenaud 2018) and active units on a subsample."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from monitoring.checks.champion import Champion, uncertainty_summary
from monitoring.checks.config import VIHealthConfig
from monitoring.checks.inputs import WindowRows
from monitoring.checks.results import Evidence, UncertaintyShift, VIHealthResult
from pipelines.serving.predictive_metrics import predictive_metrics

__all__ = ["VIHealthCheck", "MIN_LATENCY_ROWS"]

#: Fewer finite rows than this: no latency percentile (a p95 of three calls is not one).
MIN_LATENCY_ROWS = 5


class VIHealthCheck:
    """ELBO and NLL vs baseline (labelled rows), NaN/inf inputs, uncertainty shift, latency, amortization gap."""

    name = "vi_health"

    def __init__(self, config: VIHealthConfig, seed: int = 0):
        self.config, self.seed = config, seed

    def evidence(self, rows: WindowRows, champion: Champion) -> dict[str, Evidence]:
        """Rows behind each measure: ``fit`` (labelled rows; the VAE's own features), ``uncertainty`` and ``latency``
        (finite rows). NaN/inf counts need none."""
        cfg, finite = self.config, len(rows.features)
        labelled = finite if champion.kind == "amortized" else len(rows.labelled) if rows.labelled is not None else 0
        return {"fit": Evidence(labelled, cfg.min_fit_rows), "uncertainty": Evidence(finite, cfg.min_uncertainty_rows),
                "latency": Evidence(finite, MIN_LATENCY_ROWS)}

    def calculate(self, rows: WindowRows, champion: Champion) -> VIHealthResult:
        cfg, features, labelled = self.config, rows.sampled, rows.labelled
        evidence = self.evidence(rows, champion)
        out: dict = {"nonfinite_values": rows.inputs.nonfinite_values,
                     "nonfinite_fraction": rows.inputs.nonfinite_fraction}
        if champion.kind == "amortized":
            labelled = features  # the VAE's "label" is x itself
        if labelled is not None and evidence["fit"].enough:
            metrics = predictive_metrics(champion.loaded.predictor, labelled, num_samples=cfg.predictive_samples,
                                         seed=self.seed)
            for key in ("elbo_per_datum", "nll"):
                if key in metrics:
                    out[key] = metrics[key]
                    if key in champion.baseline:
                        out[f"{key}_baseline"] = champion.baseline[key]
                        out[f"{key}_delta"] = metrics[key] - champion.baseline[key]
        if len(rows.predictions) and evidence["uncertainty"].enough:
            now = uncertainty_summary(champion.kind, rows.predictions)
            base = champion.baseline_uncertainty
            out["uncertainty"] = {k: UncertaintyShift(v, base[k], v / base[k] if base[k] else None)
                                  for k, v in now.items()}
        if champion.kind == "amortized" and len(features):
            out.update(self._amortization(features, champion))
        if evidence["latency"].enough:
            out["latency_p95_ms"], out["latency_p99_ms"] = self._latency_ms(features, champion)
        return VIHealthResult(**out)

    def _amortization(self, features: pd.DataFrame, champion: Champion) -> dict:
        from models.amortized import amortization_gaps, collapse_statistics
        from pipelines.serving.predictive_metrics import bundle_tensors

        model = champion.loaded.predictor.model
        x, _ = bundle_tensors(champion.loaded.bundle, features.head(self.config.amortization_subsample))
        gaps = amortization_gaps(model, x, seed=self.seed)
        collapse = collapse_statistics(model, bundle_tensors(champion.loaded.bundle, features)[0])
        return {"amortization_gap": gaps.amortization_gap, "active_units": collapse.active_units,
                "active_unit_ratio": collapse.active_units / model.latent_dim}

    def _latency_ms(self, features: pd.DataFrame, champion: Champion) -> tuple[float | None, float | None]:
        """p95 and p99 of single-row predict calls, in ms."""
        times = []
        rows = features.head(self.config.latency_requests + 1)
        champion.loaded.pyfunc.predict(rows.iloc[[0]])  # warm-up
        for i in range(1, len(rows)):
            began = time.perf_counter()
            champion.loaded.pyfunc.predict(rows.iloc[[i]])
            times.append((time.perf_counter() - began) * 1000.0)
        if not times:
            return None, None
        return float(np.percentile(times, 95)), float(np.percentile(times, 99))
