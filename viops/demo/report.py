"""The demo's report: ``summary.json``, ``summary.md`` and four plots (:mod:`viops.demo.plots`), from the per-window
rows and MLflow.

Every number comes from what the run wrote: the monitoring DAG's results (drift share, calibration, decision), the
model registry (versions, aliases, gate verdicts) and each version's logged ELBO history.
"""

from __future__ import annotations

import json
from pathlib import Path

from viops import REPO
from viops.demo.plots import plot_elbo, plot_windows

__all__ = ["write_report", "acceptance_checks", "window_row", "deploy_entry"]


def window_row(result: dict) -> dict:
    """The report's row for one window, from the monitor's result (``viops monitor --json``, the DAG's XCom)."""
    decision = result["decision"]
    return {
        "window": result["window"], "champion_before": str(result["version"]),
        "drift_share": result["drift"].get("share"), "drifted_columns": sorted(
            name for name, column in result["drift"].get("columns", {}).items() if column["drifted"]),
        "calibration": {k: result["calibration"].get(k) for k in ("coverage_90", "coverage_50", "pit_ks")},
        "nll": result["vi_health"].get("nll"), "alerts": decision["firing"],
        "slo": [{k: s[k] for k in ("name", "status", "value", "threshold")} for s in result["slo"]],
        "action": decision["action"], "alert": decision["alert"], "runbook": decision["runbook"],
        "reason": decision["reason"], "incident_id": result.get("incident_id"),
        "drift_report": result.get("drift_report"), "deploy": deploy_entry(result),
        "deploy_error": (result.get("deploy") or {}).get("error"),
    }


def deploy_entry(result: dict) -> dict | None:
    """The window's live-deployment entry: the challenger judged beside the champion (its version, stage, metrics,
    verdict and the deployment decision), or None when no challenger was live."""
    live = result.get("deploy")
    if not live or live.get("error"):  # none live, or one that could not be judged (the row's reason says so)
        return None
    judged, decision = live["window"], live["decision"]
    nll = judged.get("nll") or {}
    return {"version": live["version"], "stage": live["stage"], "fraction": live["fraction"],
            "outcome": judged["outcome"], "nll_difference": nll.get("difference"), "nll_upper": nll.get("upper"),
            "coverage_90": (live["report"].get("calibration") or {}).get("coverage_90"),
            "action": decision["action"], "clean_windows": decision["clean_windows"], "reason": decision["reason"]}


def acceptance_checks(rows: list[dict], *, start: int, bad_before: int | None, bad_version: str | None,
                      shuffled_before: int | None = None, shuffled_version: str | None = None) -> list[dict]:
    """What the demo must show: quiet stable windows, a retrain at the shift whose version is promoted on live
    evidence after its shadow windows, the bad promotion rolled back, and the label-shuffled retrain rejected in
    shadow."""
    stable = [r for r in rows if r["index"] < start]
    checks = [{"what": f"no action on the {len(stable)} stable windows (0-{start - 1})",
               "ok": bool(stable) and all(r["action"] == "none" for r in stable)}]
    at_shift = [r for r in rows if r["index"] in (start, start + 1) and r["action"] == "retrain"]
    checks.append({"what": f"drift detected at window {start} or {start + 1} with action retrain"
                           + (f" (window {at_shift[0]['index']})" if at_shift else ""), "ok": bool(at_shift)})
    retrained = str((at_shift[0].get("retrain") or {}).get("model_version", "")) if at_shift else ""
    promoted = next((r for r in rows if (r.get("deploy") or {}).get("action") == "promote"
                     and r["deploy"]["version"] == retrained), None)
    ok = (promoted is not None and promoted["champion_after"] == retrained
          and at_shift[0]["champion_after"] == at_shift[0]["champion_before"])  # not promoted at once
    checks.append({"what": "the retrained version went to shadow and became champion on live evidence"
                           + (f" (v{retrained} after {promoted['deploy']['clean_windows']} clean shadow windows, "
                              f"window {promoted['index']})" if ok else ""), "ok": ok})
    if bad_before is not None:
        window = next((r for r in rows if r["index"] == bad_before), None)
        ok = (window is not None and window["action"] == "rollback" and window["champion_before"] == bad_version
              and window["champion_after"] != bad_version)
        checks.append({"what": f"the bad promotion (v{bad_version}) rolled back within one window"
                               + (f" (window {bad_before}: v{window['champion_before']} -> "
                                  f"v{window['champion_after']})" if ok else ""), "ok": ok})
    if shuffled_before is not None:
        window = next((r for r in rows if r["index"] == shuffled_before), None)
        live = (window or {}).get("deploy") or {}
        ok = (live.get("action") == "reject" and live.get("version") == shuffled_version
              and all(r["champion_after"] != shuffled_version for r in rows))
        checks.append({"what": f"the label-shuffled retrain (v{shuffled_version}) rejected in shadow, never champion"
                               + (f" (window {shuffled_before}: NLL {live['nll_difference']:+.2f} nats/row vs the "
                                  f"champion)" if ok and live.get("nll_difference") is not None else ""), "ok": ok})
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


def _relative(path: str, out: str) -> str:
    """``path`` relative to the report's folder when it lies inside it (links that survive moving the folder)."""
    try:
        return str(Path(path).resolve().relative_to(Path(out).resolve()))
    except ValueError:
        return path


def _markdown(summary: dict) -> str:
    lines = ["# viops demo", "",
             f"Model `{summary['model']}`; {len(summary['windows'])} windows of scenario `{summary['scenario']}` "
             f"(covariate shift from window {summary['shift_from']}); a bad version promoted by hand before window "
             f"{summary['bad_promotion_before']}; a retrain on label-shuffled rows deployed in shadow before window "
             f"{summary.get('shuffled_before')}. Took {summary['seconds']:.0f} s.", "", "## Checks", ""]
    lines += [f"- {'✅' if c['ok'] else '❌'} {c['what']}" for c in summary["checks"]]
    lines += ["", "## Windows", "",
              "| # | window | phase | drift share | drift report | coverage 90% | action | runbook | "
              "champion before → after |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in summary["windows"]:
        coverage = r["calibration"].get("coverage_90")
        runbook = f"[{r['alert']}]({REPO / r['runbook']})" if r["runbook"] else "-"
        note = f" ({r['event_before']})" if r["event_before"] else ""
        report = f"[html]({_relative(r['drift_report'], summary['out'])})" if r.get("drift_report") else "-"
        lines.append(f"| {r['index']} | {r['window']} | {r['phase']} | {r['drift_share'] or 0:.2f} | {report} | "
                     f"{'-' if coverage is None else f'{coverage:.2f}'} | **{r['action']}** | {runbook} | "
                     f"v{r['champion_before']} → v{r['champion_after']}{note} |")
    lines += ["", "Every window with a firing alert, and the decision's reason:", ""]
    lines += [f"- window {r['index']} ({', '.join(r['alerts'])}): **{r['action']}**: {r['reason']}"
              + (f" Incident `{r['incident_id']}` (MLflow experiment `viops-incidents`)" if r.get("incident_id")
                 else "")
              + (f"; [drift report]({_relative(r['drift_report'], summary['out'])})" if r.get("drift_report") else "")
              for r in summary["windows"] if r["alerts"]]
    live = [r for r in summary["windows"] if r.get("deploy")]
    if live:
        lines += ["", "Live deployment: the challenger judged beside the champion on each window (docs/deployment.md):",
                  "", "| # | challenger | stage | outcome | NLL vs champion (nats/row) | coverage 90% | decision |",
                  "|---|---|---|---|---|---|---|"]
        for r in live:
            d = r["deploy"]
            nll = "-" if d["nll_difference"] is None else f"{d['nll_difference']:+.3f} (upper {d['nll_upper']:+.3f})"
            coverage = "-" if d["coverage_90"] is None else f"{d['coverage_90']:.2f}"
            lines.append(f"| {r['index']} | v{d['version']} | {d['stage']} | {d['outcome']} | {nll} | {coverage} | "
                         f"**{d['action']}**: {d['reason']} |")
    triggered = [r for r in summary["windows"] if r["airflow"].get("triggered")]
    if triggered:
        how = ("the scheduler ran each on the Celery workers" if summary.get("scheduler") else
               "without a scheduler the demo runs each with `dag.test()`, which names the run `manual__…`, "
               "docs/operations.md")
        lines += ["", f"Retrains the monitoring DAG triggered (run id `monitor__<incident id>`; {how}):", ""]
        lines += [f"- window {r['index']}: `svi_retrain` `{r['airflow']['triggered']}`, run as "
                  f"`{r['airflow'].get('svi_retrain', '-')}`" for r in triggered]
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
                 airflow_ui: str, scheduler: bool = False, shuffled_version: str | None = None,
                 shuffled_before: int | None = None) -> dict:
    """``scheduler``: the runs went through Airflow's scheduler (``make demo-cluster``), not ``dag.test()``."""
    from pipelines.registry.audit import read_log

    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    versions = _versions(client, model)
    paths = [plot_elbo(client, versions, plots / "elbo_curves.png"), *plot_windows(rows, plots, scenario.start)]
    summary = {
        "model": model, "scenario": scenario.name, "shift_from": scenario.start, "first_version": str(first_version),
        "bad_version": bad_version, "bad_promotion_before": bad_before, "seconds": round(seconds, 1),
        "shuffled_version": shuffled_version, "shuffled_before": shuffled_before,
        "checks": acceptance_checks(rows, start=scenario.start, bad_before=bad_before, bad_version=bad_version,
                                    shuffled_before=shuffled_before, shuffled_version=shuffled_version) + [
            {"what": f"every version ({len(versions)}) is signed and its files verify",
             "ok": bool(versions) and all(v["signature_verified"] for v in versions)}],
        "windows": rows, "versions": versions, "audit": read_log(out / "audit.jsonl"),
        "plots": [str(p.relative_to(out)) for p in paths], "mlflow_ui": mlflow_ui, "airflow_ui": airflow_ui,
        "out": str(out), "scheduler": scheduler,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    (out / "summary.md").write_text(_markdown(summary))
    return summary
