"""``viops diagnose --sbc``: simulation-based calibration of a training config's VI on its own design.

The config's model and guide are built as training builds them, on the training split's features (standardised as
training standardises them, at most ``max_rows`` of them, seeded): :func:`models.sbc.simulation_based_calibration`
then simulates data from the prior, fits the guide to each simulated dataset and ranks the true latents among the
variational draws. The result names each latent coordinate with its p-value, and a rank-histogram plot shows the
shape of any failure (a U: q too narrow; a hump: q too wide; a slope: biased). docs/families.md#sbc.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipelines.build import build_family, build_model
from pipelines.config.base import ConfigError
from pipelines.config.schema import TrainConfig
from pipelines.training.data import count_classes, prepare
from pipelines.training.evaluation import split_tensors, standardization

__all__ = ["run_sbc", "plot_ranks"]


def _latent_names(model) -> list[str]:
    names = []
    for block in getattr(model, "blocks", ()):
        size = block.stop - block.start
        names += [block.name] if size == 1 else [f"{block.name}[{i}]" for i in range(size)]
    return names if len(names) == model.latent_dim else [f"z[{i}]" for i in range(model.latent_dim)]


def run_sbc(config: TrainConfig, *, fits: int = 100, draws: int = 99, steps: int = 1500, lr: float = 0.02,
            bins: int = 10, max_rows: int = 200, seed: int = 0, out: str | Path | None = None) -> dict:
    """SBC of ``config``'s guide on its model; returns ``{passed, p_values{latent: p}, ...}`` and, with ``out``,
    writes ``sbc.json`` and ``sbc_ranks.png`` there.

    Raises:
        ConfigError: an amortized model, or a model whose prior over its latents is not one Gaussian.
    """
    from models.sbc import simulation_based_calibration

    if config.model.kind == "vae":
        raise ConfigError("simulation-based calibration runs on global-latent models, not on the VAE")
    if fits < bins or draws < 1 or (draws + 1) % bins:
        raise ConfigError(f"SBC needs draws + 1 ({draws + 1}) divisible by bins ({bins}) and at least as many fits "
                          f"({fits}) as bins")
    data = prepare(config.data)
    classify = config.model.task == "classification"
    num_classes = count_classes(data, getattr(config.model, "num_classes", None)) if classify else None
    train = data.train.sample(n=max_rows, random_state=seed) if len(data.train) > max_rows else data.train
    stats = standardization(data, classify=classify) if config.data.standardize else None
    x, _ = split_tensors(train, data.features, data.target, stats, classify=classify)
    model = build_model(config.model, len(data.features), num_classes)
    if model.gaussian_prior() is None:
        raise ConfigError(f"{config.name}: simulation-based calibration needs normal priors and fixed noise (the "
                          f"prior over the latents must be one Gaussian); override e.g. model.noise={{fixed: 1.0}}")
    result = simulation_based_calibration(model, lambda: build_family(config.guide, model.latent_dim), x,
                                          fits=fits, draws=draws, steps=steps, lr=lr, bins=bins, seed=seed)
    names = _latent_names(model)
    summary = {"config": config.name, "family": config.guide.family, "passed": result.passed,
               "p_values": dict(zip(names, map(float, result.p_values))), "alpha": result.alpha,
               "failed": [n for n, p in zip(names, result.p_values) if p <= result.alpha / len(names)],
               "fits": fits, "draws": draws, "steps": steps, "rows": len(x), "seconds": round(result.seconds, 1)}
    if out is not None:
        import json

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "sbc.json").write_text(json.dumps({**summary, "ranks": result.ranks.tolist()}, indent=1))
        summary["plot"] = str(plot_ranks(result.histogram(), names, fits, out / "sbc_ranks.png",
                                         f"SBC of {config.name} ({config.guide.family}): rank of the truth"))
    return summary


def plot_ranks(histogram: np.ndarray, names: list[str], fits: int, path: Path, title: str) -> Path:
    """One small rank histogram per latent, with the uniform expectation and its 99% band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dim, bins = histogram.shape
    cols = min(dim, 4)
    rows = -(-dim // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.2 * rows), dpi=100, squeeze=False)
    expected = fits / bins
    band = 2.58 * np.sqrt(expected * (1 - 1 / bins))
    try:
        for i, ax in enumerate(axes.flat):
            if i >= dim:
                ax.axis("off")
                continue
            ax.bar(np.arange(bins), histogram[i], width=0.9, color="tab:blue")
            ax.axhspan(expected - band, expected + band, color="grey", alpha=0.25, label="uniform, 99%")
            ax.set_title(names[i], fontsize=9)
            ax.set_xticks([])
        axes.flat[0].legend(fontsize=7, loc="upper right")
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path
