"""The demo's four plots, each drawn to be read without the code: ELBO curves per version, drift share, calibration
and the champion timeline per window. Every number comes from MLflow or the per-window rows."""

from __future__ import annotations

import textwrap
from pathlib import Path

__all__ = ["plot_elbo", "plot_windows", "ACTION_COLOURS"]

ACTION_COLOURS = {"none": "#9e9e9e", "ticket": "#bcbd22", "page": "#ff7f0e", "retrain": "#1f77b4",
                  "rollback": "#d62728", "promote": "#2ca02c", "reject": "#9467bd"}


#: Steps averaged by the smoothed training curve (a centred moving average of the minibatch ELBO per datum).
SMOOTH_STEPS = 50


def _smooth(values: list[float], width: int = SMOOTH_STEPS) -> list[float]:
    """Centred moving average (shorter at the ends), so noise of single minibatches does not hide the trend."""
    import numpy as np

    values = np.asarray(values, dtype=float)
    if len(values) < 3:
        return values.tolist()
    width = max(1, min(width, len(values) // 5 or 1))
    kernel = np.ones(width)
    total = np.convolve(values, kernel, mode="same")
    counts = np.convolve(np.ones_like(values), kernel, mode="same")
    return (total / counts).tolist()


def plot_elbo(client, versions: list[dict], path: Path) -> Path:
    """One panel per version, linear axes: the training ELBO per datum (minibatch estimates, and their moving
    average) and the validation ELBO per datum, on one SVI-step axis. Each panel has its own scale: a bad candidate's
    ELBO can be twenty times lower and would flatten the others' curves to a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    curves = []
    for version in versions:
        rows = float(version["train_rows"] or 1)
        train = sorted((m.step, m.value / rows) for m in client.get_metric_history(version["run_id"], "elbo"))
        val = sorted((m.step, m.value) for m in client.get_metric_history(version["run_id"], "val_elbo"))
        curves.append((version, train, val))
    columns = min(len(curves), 3) or 1
    lines = -(-len(curves) // columns) or 1
    fig, axes = plt.subplots(lines, columns, figsize=(3.8 * columns, 3.1 * lines), squeeze=False)
    for ax, (version, train, val) in zip(axes.flat, curves):
        if train:
            steps, values = zip(*train)
            ax.plot(steps, values, lw=0.4, color="#c6dbef", label="training, per minibatch")
            ax.plot(steps, _smooth(list(values)), lw=1.4, color="#1f77b4",
                    label=f"training, {SMOOTH_STEPS}-step mean")
        if val:
            steps, values = zip(*val)
            ax.plot(steps, values, marker="o", ms=2.5, lw=1, color="#d62728", label="validation")
        why = textwrap.shorten(version["trigger_reason"] or "first model", 90, placeholder=" ...")
        ax.set_title("\n".join(textwrap.wrap(f"v{version['version']} (gate {version['gate']}): {why}", 46)[:2]),
                     fontsize=8)
        ax.set_xlabel("SVI step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        settled = [v for _, v in train[len(train) // 4:] + val[len(val) // 4:]]
        if settled:  # each axis shows where its curves settle; the first steps' transient runs off the bottom
            low, high = np.percentile(settled, [0.5, 100])
            pad = 0.1 * max(high - low, 1e-3)
            ax.set_ylim(low - pad, high + pad)
    for ax in axes.flat[len(curves):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("ELBO per datum (nats)", fontsize=8)
    axes.flat[0].legend(fontsize=6, loc="lower right")
    fig.suptitle("ELBO per datum of each registered version (own scale per panel)", fontsize=10)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_challenger(ax, row: dict, *, first: bool) -> None:
    """A live challenger's window: a dashed line at its version, and its promotion or rejection when decided."""
    live = row.get("deploy")
    if not live:
        return
    version, x = int(live["version"]), row["index"]
    ax.hlines(version, x - 0.5, x + 0.5, color="#555555", lw=1.5, linestyles="dashed",
              label=f"challenger in {live['stage']}" if first else None)
    if live["action"] not in ("promote", "reject"):
        return
    colour = ACTION_COLOURS[live["action"]]
    ax.scatter(x, version, s=70, zorder=3, color=colour, edgecolor="black", lw=0.5, marker="D")
    if live["action"] == "promote":
        ax.annotate("", (x + 0.5, version), (x, int(row["champion_before"])), zorder=2,
                    arrowprops={"arrowstyle": "->", "color": colour, "lw": 1.4})
    what = (f"promoted: {live['clean_windows']} clean\nshadow windows" if live["action"] == "promote" else
            f"rejected in {live['stage']}\nNLL {live['nll_difference']:+.2f} nats/row" if live["nll_difference"]
            is not None else f"rejected in {live['stage']}")
    below = live["action"] == "promote"  # above it, the rollback of a version promoted by hand may sit
    ax.annotate(what, (x, version), xytext=(-8, -8 if below else 8), textcoords="offset points", ha="right",
                va="top" if below else "bottom", fontsize=7, color=colour,
                bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": colour, "lw": 0.5, "alpha": 0.9})


def _action_legend(ax, rows: list[dict], live_rows: list[dict] = ()) -> None:
    """Legend entries for the actions that occurred in ``rows`` (in decision order) and the challenger decisions in
    ``live_rows``, after those already on ``ax``."""
    from matplotlib.patches import Patch

    from monitoring.metrics import DECISIONS

    taken = [a for a in DECISIONS if any(r["action"] == a for r in rows)]
    deployed = [a for a in ("promote", "reject") if any((r.get("deploy") or {}).get("action") == a for r in live_rows)]
    handles, labels = ax.get_legend_handles_labels()
    handles += [Patch(color=ACTION_COLOURS.get(a, "#555555")) for a in [*taken, *deployed]]
    labels += [f"action: {a}" for a in taken] + [f"challenger: {a}" for a in deployed]
    ax.legend(handles, labels, fontsize=7, loc="upper left")


def plot_windows(rows: list[dict], plots: Path, start: int) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    index = [r["index"] for r in rows]
    right = max(index) + 0.5

    def shade(ax):
        ax.axvspan(-0.5, start - 0.5, color="#e5f5e0", alpha=0.6, lw=0, label="stable windows")
        ax.axvspan(start - 0.5, right, color="#fde0c5", alpha=0.6, lw=0, label="covariate shift")
        ax.set_xticks(index)
        ax.set_xlim(-0.5, right)
        ax.set_xlabel("window")

    paths = []
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    shade(ax)
    slo = [next((x for x in r["slo"] if x["name"] == "feature_drift"), None) for r in rows]
    weighted = [(x["value"] if x and x["value"] is not None else 0.0) for x in slo]
    ax.bar(index, weighted, color=[ACTION_COLOURS.get(r["action"], "#555555") for r in rows], width=0.7)
    unweighted = [r["drift_share"] or 0.0 for r in rows]
    for i, share, plain in zip(index, weighted, unweighted):  # a stable window's 0.00 is a result: written down
        ax.annotate(f"{share:.2f}", (i, max(share, plain)), xytext=(0, 5), textcoords="offset points", ha="center",
                    fontsize=7)
    ax.scatter(index, unweighted, marker="D", s=22, facecolor="white", edgecolor="black", zorder=3,
               label="share of drifted features (unweighted)")
    threshold = next((x["threshold"] for x in slo if x), None)
    if threshold is not None and threshold.startswith("<="):
        ax.axhline(float(threshold[2:]), color="black", ls="--", lw=1, label=f"SLO feature_drift: {threshold}")
    ax.set(ylabel="weighted share of drifted features", ylim=(0, 1.15),
           title="Feature drift per window (Evidently), weighted by what the champion uses")
    _action_legend(ax, rows)
    paths.append(_save(fig, plots / "drift_share.png"))

    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    shade(ax)
    for key, target, colour, marker in (("coverage_90", 0.9, "C0", "o"), ("coverage_50", 0.5, "C1", "s")):
        level = key.split("_")[1]
        ax.plot(index, [r["calibration"].get(key) for r in rows], marker=marker, color=colour,
                label=f"{level}% interval: coverage")
        ax.axhline(target, color=colour, ls=":", lw=1.2, label=f"{level}% interval: target {target:.2f}")
    ax.set(ylabel="share of labelled rows inside", ylim=(0, 1.05),
           title="Calibration of the champion per window (predictive interval coverage)")
    ax.legend(fontsize=7, loc="lower left", ncol=2)
    paths.append(_save(fig, plots / "calibration.png"))
    paths.append(_plot_timeline(rows, plots / "timeline.png", shade))
    return paths


def _plot_timeline(rows: list[dict], path: Path, shade) -> Path:
    """The champion that scored each window as a line over that window, and a live challenger as a dashed line at its
    version; each action as a marker in the window that decided it, with an arrow to the version it left in place
    from the next window on (a promotion on live evidence, too)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 4.2))
    shade(ax)
    versions = sorted({int(r["champion_before"]) for r in rows} | {int(r["champion_after"]) for r in rows}
                      | {int(r["deploy"]["version"]) for r in rows if r.get("deploy")})
    for i, r in enumerate(rows):
        before, after = int(r["champion_before"]), int(r["champion_after"])
        ax.hlines(before, r["index"] - 0.5, r["index"] + 0.5, color="black", lw=2,
                  label="champion that scored the window" if r is rows[0] else None)
        if i and before != int(rows[i - 1]["champion_after"]):  # changed between windows: by hand
            ax.annotate(f"v{before} promoted\nby hand", (r["index"] - 0.5, before), xytext=(3, 8),
                        textcoords="offset points", ha="left", va="bottom", fontsize=7, color="#d62728",
                        arrowprops={"arrowstyle": "-", "color": "#d62728", "lw": 0.8})
        _plot_challenger(ax, r, first=r is next((x for x in rows if x.get("deploy")), None))
        if r["action"] == "none":
            continue
        colour = ACTION_COLOURS.get(r["action"], "#555555")
        ax.scatter(r["index"], before, s=70, zorder=3, color=colour, edgecolor="black", lw=0.5)
        if after != before:
            ax.annotate("", (r["index"] + 0.5, after), (r["index"], before), zorder=2,
                        arrowprops={"arrowstyle": "->", "color": colour, "lw": 1.4})
        near_right = r["index"] > (len(rows) - 1) * 0.75
        ax.annotate(f"{r['action']}: {r['alert']}" + (f"\nv{before} -> v{after}" if after != before else ""),
                    (r["index"], before), xytext=(-6 if near_right else 6, -14), textcoords="offset points",
                    ha="right" if near_right else "left", va="top", fontsize=7, color=colour,
                    bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": colour, "lw": 0.5, "alpha": 0.9})
    ax.set_yticks(versions, [f"v{v}" for v in versions])
    ax.set_ylim(min(versions) - 0.9, max(versions) + 0.6)
    ax.set(ylabel="champion version", title="Champion per window, and the action each window's monitor took")
    _action_legend(ax, [r for r in rows if r["action"] != "none"], rows)
    return _save(fig, path)
