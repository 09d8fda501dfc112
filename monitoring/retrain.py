"""Carry out a ``retrain`` decision: train on the champion's data plus the window's labelled rows, then gate.

The same steps as the ``svi_retrain`` DAG run that ``vi_monitoring`` triggers, for ``viops monitor --execute``:

1. the champion's resolved training config (logged with its run);
2. ``viops prepare --extra-data <window>``: its data plus the window's labelled rows with finite features and target,
   split together;
3. ``viops train --prepared`` in a child process, which registers the new version as ``challenger``;
4. the gate against the champion on the new run's held-out split;
5. a promotion when the gate passes, with the decision's reason in the audit record. A rejected version stays a
   challenger, and the champion is untouched.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["retrain_with_window"]


def retrain_with_window(client, *, model: str, champion_run_id: str, window_path: str | Path, added_rows: int,
                        window: str, reason: str, actor: str, tracking_uri: str, workdir: str | Path,
                        trigger: dict | None = None) -> dict:
    """Retrain ``model`` on its data plus the labelled rows of ``window_path`` and gate the result.

    ``added_rows``: how many labelled finite rows the window has, as the monitor counted them (reported as is).
    Returns ``{"run_id", "version", "rows", "added_rows", "verdict": {...}, "promoted": bool, "promotion": ...}``.
    """
    import mlflow

    from pipelines.gate import evaluate
    from pipelines.invoke import run_viops
    from pipelines.registry import promote

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = Path(mlflow.artifacts.download_artifacts(
        run_id=champion_run_id, artifact_path="config/resolved_config.yaml", tracking_uri=tracking_uri,
        dst_path=str(workdir)))
    prepared = run_viops(["prepare", "--config", str(config_path), "--out", str(workdir / "prepared"),
                          "--extra-data", str(window_path)])
    trained = run_viops(["train", "--config", str(config_path), "--prepared", prepared["directory"],
                         "--tracking-uri", tracking_uri, "--reason", reason, "--run-name", f"viops-monitor/{window}"])
    version = str(trained["model_version"])
    verdict = evaluate(client, model, tracking_uri=tracking_uri, candidate=version)
    out = {"run_id": trained["run_id"], "version": version, "rows": sum(prepared["rows"].values()),
           "added_rows": added_rows, "verdict": {"passed": verdict.passed, "reasons": verdict.reasons,
                                                 "evaluation_run_id": verdict.evaluation_run_id},
           "promoted": False, "promotion": None}
    if verdict.passed:
        change = promote(client, model, version, reason=reason, actor=actor, trigger=trigger or {})
        out["promoted"], out["promotion"] = change.changed, change.to_json()
    return out
