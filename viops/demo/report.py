"""The demo's report: ``summary.json``, ``summary.md`` and four plots, from the per-window rows and MLflow.

Every number comes from what the run wrote: the monitoring DAG's results (drift share, calibration, decision), the
model registry (versions, aliases, gate verdicts) and each version's logged ELBO history.
"""

from __future__ import annotations

import json
from pathlib import Path

from viops import REPO

__all__ = ["write_report", "acceptance_checks"]


ACTION_COLOURS = {"none": "#9e9e9e", "retrain": "#1f77b4", "rollback": "#d62728", "page": "#ff7f0e"}


def acceptance_checks(rows: list[dict], *, start: int, bad_before: int | None, bad_version: str | None) -> list[dict]:
    """What the demo must show: quiet stable windows, a retrain at the shift, and the bad promotion rolled back."""
    stable = [r for r in rows if r["index"] < start]
    checks = [{"what": f"no action on the {len(stable)} stable windows (0-{start - 1})",
               "ok": bool(stable) and all(r["action"] == "none" for r in stable)}]
    at_shift = [r for r in rows if r["index"] in (start, start + 1) and r["action"] == "retrain"]
    retrained = [r for r in at_shift if r["champion_after"] != r["champion_before"]]
    checks.append({"what": f"drift detected at window {start} or {start + 1} with action retrain"
                           + (f" (window {at_shift[0]['index']})" if at_shift else ""), "ok": bool(at_shift)})
    checks.append({"what": "a new champion after the retrain"
                           + (f" (v{retrained[0]['champion_before']} -> v{retrained[0]['champion_after']})"
                              if retrained else ""), "ok": bool(retrained)})
    if bad_before is not None:
        window = next((r for r in rows if r["index"] == bad_before), None)
        ok = (window is not None and window["action"] == "rollback" and window["champion_before"] == bad_version
              and window["champion_after"] != bad_version)
        checks.append({"what": f"the bad promotion (v{bad_version}) rolled back within one window"
                               + (f" (window {bad_before}: v{window['champion_before']} -> "
                                  f"v{window['champion_after']})" if ok else ""), "ok": ok})
    return checks


def _versions(client, model: str) -> list[dict]:
    from pipelines.registry.signing import SignatureInvalid, verify_version

    out = []
    for found in sorted(client.search_model_versions(f"name='{model}'"), key=lambda v: int(v.version)):
        version = client.get_model_version(model, found.version)
        try:
            verified = verify_version(client, model, version)
        except SignatureInvalid:
            verified = False
        run = client.get_run(version.run_id)
        gate = version.tags.get("viops.gate.passed")
        out.append({
            "version": str(version.version), "run_id": version.run_id, "aliases": sorted(version.aliases),
            "trigger_reason": run.data.tags.get("viops.trigger_reason", ""),
            "gate": {"true": "passed", "false": "rejected"}.get(gate, "not evaluated"),
            "rolled_back": version.tags.get("viops.rolled_back") == "true",
            "signature_verified": verified,
            "test_predictive_nll": run.data.metrics.get("final/test_predictive_nll"),
            "train_rows": next((json.loads(d.dataset.profile).get("num_rows") for d in run.inputs.dataset_inputs
                                if d.dataset.profile), None),
        })
    return out


def _plot_elbo(client, versions: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for version in versions:
        history = sorted((m.step, m.value) for m in client.get_metric_history(version["run_id"], "elbo"))
        rows = float(version["train_rows"] or 1)
        if history:
            steps, values = zip(*history)
            ax.plot(steps, [v / rows for v in values], lw=1,
                    label=f"v{version['version']}: {version['trigger_reason']}")
    ax.set(xlabel="step", ylabel="minibatch ELBO per training row", title="ELBO of each version")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.legend(fontsize=7)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_windows(rows: list[dict], plots: Path, start: int) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    index = [r["index"] for r in rows]

    def shade(ax):
        ax.axvspan(start - 0.5, max(index) + 0.5, color="#fde0c5", alpha=0.5, lw=0, label="covariate shift")
        ax.set_xticks(index)
        ax.set_xlabel("window")

    paths = []
    fig, ax = plt.subplots(figsize=(7, 3.5))
    shade(ax)
    ax.bar(index, [r["drift_share"] or 0.0 for r in rows], color=[ACTION_COLOURS[r["action"]] for r in rows])
    threshold = next((s["threshold"] for r in rows for s in r["slo"] if s["name"] == "feature_drift"), None)
    if threshold is not None and threshold.startswith("<="):
        ax.axhline(float(threshold[2:]), color="black", ls="--", lw=1, label=f"SLO feature_drift: share {threshold}")
    for action, colour in ACTION_COLOURS.items():
        ax.bar([index[0]], [0.0], color=colour, label=f"action {action}")
    ax.set(ylabel="share of drifted features", ylim=(0, 1), title="Feature drift (Evidently) per window")
    ax.legend(fontsize=7, loc="upper left")
    paths.append(_save(fig, plots / "drift_share.png"))

    fig, ax = plt.subplots(figsize=(7, 3.5))
    shade(ax)
    for key, marker in (("coverage_90", "o"), ("coverage_50", "s")):
        ax.plot(index, [r["calibration"].get(key) for r in rows], marker=marker, label=key.replace("_", " ") + "%")
    ax.axhline(0.9, color="C0", ls=":", lw=1)
    ax.axhline(0.5, color="C1", ls=":", lw=1)
    ax.set(ylabel="interval coverage", ylim=(0, 1), title="Calibration of the champion per window (labelled rows)")
    ax.legend(fontsize=7)
    paths.append(_save(fig, plots / "calibration.png"))

    fig, ax = plt.subplots(figsize=(8, 3.8))
    shade(ax)
    ax.step(index, [int(r["champion_before"]) for r in rows], where="mid", color="black", lw=1,
            label="champion while scored")
    for r in rows:
        if r["event_before"]:
            ax.annotate(f"v{r['champion_before']} promoted by hand", (r["index"] - 0.5, int(r["champion_before"])),
                        xytext=(-6, -3), textcoords="offset points", ha="right", va="top", fontsize=7,
                        color="#d62728")
        ax.scatter(r["index"], int(r["champion_after"]), s=60, zorder=3, color=ACTION_COLOURS[r["action"]])
        if r["action"] != "none":
            ax.annotate(f"{r['action']}\n{r['alert']}", (r["index"], int(r["champion_after"])), fontsize=7,
                        xytext=(4, 6), textcoords="offset points")
    ax.set(ylabel="champion version", title="Actions per window (runbooks/<alert>.md) and the champion after each")
    ax.set_yticks(sorted({int(r["champion_after"]) for r in rows} | {int(r["champion_before"]) for r in rows}))
    paths.append(_save(fig, plots / "timeline.png"))
    return paths


def _markdown(summary: dict) -> str:
    lines = ["# viops demo", "",
             f"Model `{summary['model']}`; {len(summary['windows'])} windows of scenario `{summary['scenario']}` "
             f"(covariate shift from window {summary['shift_from']}); a bad version promoted by hand before window "
             f"{summary['bad_promotion_before']}. Took {summary['seconds']:.0f} s.", "", "## Checks", ""]
    lines += [f"- {'✅' if c['ok'] else '❌'} {c['what']}" for c in summary["checks"]]
    lines += ["", "## Windows", "",
              "| # | window | phase | drift share | coverage 90% | action | runbook | champion before → after |",
              "|---|---|---|---|---|---|---|---|"]
    for r in summary["windows"]:
        coverage = r["calibration"].get("coverage_90")
        runbook = f"[{r['alert']}]({REPO / r['runbook']})" if r["runbook"] else "-"
        note = f" ({r['event_before']})" if r["event_before"] else ""
        lines.append(f"| {r['index']} | {r['window']} | {r['phase']} | {r['drift_share'] or 0:.2f} | "
                     f"{'-' if coverage is None else f'{coverage:.2f}'} | **{r['action']}** | {runbook} | "
                     f"v{r['champion_before']} → v{r['champion_after']}{note} |")
    lines += ["", "Every window with a firing alert, and the decision's reason:", ""]
    lines += [f"- window {r['index']} ({', '.join(r['alerts'])}): **{r['action']}**: {r['reason']}"
              for r in summary["windows"] if r["alerts"]]
    lines += ["", "## Versions", "", "| version | aliases | gate | signature | test NLL | why trained |",
              "|---|---|---|---|---|---|"]
    for v in summary["versions"]:
        nll = v["test_predictive_nll"]
        rolled = " (rolled back)" if v["rolled_back"] else ""
        lines.append(f"| {v['version']} | {', '.join(v['aliases']) or '-'}{rolled}"
                     f" | {v['gate']} | {'verified' if v['signature_verified'] else 'REFUSED'}"
                     f" | {'-' if nll is None else f'{nll:.3f}'} | {v['trigger_reason']} |")
    lines += ["", "## Audit trail", ""]
    lines += [f"- {a['time']} **{a['action']}** v{a['from_version'] or '-'} → v{a['to_version']} by {a['actor']}: "
              f"{a['reason']}" for a in summary["audit"]]
    lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in summary["plots"]]
    lines += ["", "## Where to look", "", f"- MLflow UI: `{summary['mlflow_ui']}`",
              f"- Airflow UI: `{summary['airflow_ui']}`", ""]
    return "\n".join(lines)


def write_report(out: Path, client, *, model: str, rows: list[dict], scenario, first_version: str,
                 bad_version: str | None, bad_before: int | None, seconds: float, mlflow_ui: str,
                 airflow_ui: str) -> dict:
    from pipelines.registry.audit import read_log

    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    versions = _versions(client, model)
    paths = [_plot_elbo(client, versions, plots / "elbo_curves.png"), *_plot_windows(rows, plots, scenario.start)]
    summary = {
        "model": model, "scenario": scenario.name, "shift_from": scenario.start, "first_version": str(first_version),
        "bad_version": bad_version, "bad_promotion_before": bad_before, "seconds": round(seconds, 1),
        "checks": acceptance_checks(rows, start=scenario.start, bad_before=bad_before, bad_version=bad_version) + [
            {"what": f"every version ({len(versions)}) is signed and its files verify",
             "ok": bool(versions) and all(v["signature_verified"] for v in versions)}],
        "windows": rows, "versions": versions, "audit": read_log(out / "audit.jsonl"),
        "plots": [str(p.relative_to(out)) for p in paths], "mlflow_ui": mlflow_ui, "airflow_ui": airflow_ui,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    (out / "summary.md").write_text(_markdown(summary))
    return summary
