"""Carry out a ``retrain`` decision: train on the champion's data plus the window's labelled rows, then gate.

The same steps as the ``svi_retrain`` DAG, for ``viops monitor --execute``:

1. the champion's resolved training config (logged with its run);
2. its data, as the config loads it, plus the window's labelled, finite rows, written to one Parquet file that the
   config then points at (same features, target and split settings);
3. ``viops train`` in a child process, which registers the new version as ``challenger``;
4. the gate against the champion on the new run's held-out split;
5. a promotion when the gate passes, with the decision's reason in the audit record. A rejected version stays a
   challenger, and the champion is untouched.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

__all__ = ["retrain_with_window"]


def retrain_with_window(client, *, model: str, champion_run_id: str, labelled: pd.DataFrame, window: str,
                        reason: str, actor: str, tracking_uri: str, workdir: str | Path,
                        trigger: dict | None = None) -> dict:
    """Retrain ``model`` on its data plus ``labelled`` (the window's labelled finite rows) and gate the result.

    Returns ``{"run_id", "version", "verdict": {...}, "promoted": bool, "promotion": {...} | None}``.
    """
    import mlflow

    from pipelines.config import TrainConfig
    from pipelines.data import prepare
    from pipelines.gate import evaluate
    from pipelines.invoke import run_viops
    from pipelines.registry import promote

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    resolved = yaml.safe_load(Path(mlflow.artifacts.download_artifacts(
        run_id=champion_run_id, artifact_path="config/resolved_config.yaml", tracking_uri=tracking_uri)).read_text())
    config = TrainConfig.model_validate(resolved)
    data = prepare(config.data)
    columns = [*data.features, data.target]
    original = pd.concat([data.train, data.validation, data.test])[columns]
    combined = pd.concat([original, labelled[columns]], ignore_index=True)
    path = workdir / "training_data.parquet"
    combined.to_parquet(path, index=False)
    resolved["data"] = {**resolved["data"], "path": str(path), "sklearn": None, "target": data.target,
                        "features": list(data.features)}
    config_path = workdir / "retrain_config.yaml"
    config_path.write_text(yaml.safe_dump(resolved, sort_keys=False))

    trained = run_viops(["train", "--config", str(config_path), "--tracking-uri", tracking_uri,
                         "--reason", reason, "--run-name", f"viops-monitor/{window}"])
    version = str(trained["model_version"])
    verdict = evaluate(client, model, tracking_uri=tracking_uri, candidate=version)
    out = {"run_id": trained["run_id"], "version": version, "rows": len(combined), "added_rows": len(labelled),
           "verdict": {"passed": verdict.passed, "reasons": verdict.reasons,
                       "evaluation_run_id": verdict.evaluation_run_id},
           "promoted": False, "promotion": None}
    if verdict.passed:
        change = promote(client, model, version, reason=reason, actor=actor, trigger=trigger or {})
        out["promoted"], out["promotion"] = change.changed, change.to_json()
    return out
