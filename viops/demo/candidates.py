"""The demo's hand-made candidates and how its progress lines describe a retrain and a live challenger.

Before window 10 a version trained on the demo rows with their labels shuffled (as a broken join would) passes a
gate tuned loose and goes to shadow: the first live window shows it fits worse than the champion, and rejects it.
"""

from __future__ import annotations

from pathlib import Path

from viops import REPO

__all__ = ["DEMO_CONFIG", "SHUFFLED_BEFORE", "LOOSE_GATE", "shuffled_candidate", "retrain_outcome", "live_note"]

DEMO_CONFIG = REPO / "configs" / "demo" / "blr_diabetes.yaml"
#: The window before which a version trained on label-shuffled rows is deployed in shadow (past a loose gate).
SHUFFLED_BEFORE = 10
#: The loose gate it passes: any NLL within 5 nats of the champion's on its own (shuffled) held-out rows.
LOOSE_GATE = {"nll_tolerance": 5.0, "sd_ratio_to_laplace": None, "max_psis_khat": None}


def shuffled_candidate(client, uri: str, out: Path) -> tuple[str, str]:
    """Train the demo model on its rows with the labels shuffled (a broken join, say), pass it through a loose gate
    and deploy it in shadow. Returns ``(version, what happened)``."""
    import numpy as np
    from sklearn.datasets import load_diabetes

    from pipelines.config.loading import load_config, parse_overrides
    from pipelines.config.schema import GateConfig
    from pipelines.lifecycle.train import train
    from pipelines.registry.deployment import start_deployment
    from pipelines.registry.gate import evaluate

    frame = load_diabetes(as_frame=True).frame
    frame["target"] = np.random.default_rng(0).permutation(frame["target"].to_numpy())
    (out / "data").mkdir(exist_ok=True)
    frame.to_csv(out / "data" / "diabetes_shuffled_labels.csv", index=False)
    config = load_config(DEMO_CONFIG, parse_overrides([f"data.path={out / 'data' / 'diabetes_shuffled_labels.csv'}",
                                                       "data.sklearn=null", "data.target=target"]))
    result = train(config, tracking_uri=uri, run_name="demo-shuffled-labels",
                   tags={"viops.trigger_reason": "demo: a retrain on label-shuffled rows"})
    version = str(result.model_version)
    verdict = evaluate(client, config.model_name, tracking_uri=uri, candidate=version, gate=GateConfig(**LOOSE_GATE))
    if not verdict.passed:
        raise SystemExit(f"the label-shuffled version did not pass the loose gate: {verdict.reasons}")
    start_deployment(client, config.model_name, version, policy=config.deploy, actor="demo:data-engineer",
                     reason="demo: retrained on label-shuffled rows, passed a loose gate")
    return version, f"v{version} trained on label-shuffled rows, passed a loose gate, deployed in shadow"


def retrain_outcome(states: dict) -> str:
    """What an svi_retrain run did with its version, from its task states."""
    if states.get("promote") == "success":
        return "promoted"
    return "deployed live" if states.get("deploy_live") == "success" else "rejected"


def live_note(row: dict) -> str:
    """The window's challenger and its deployment decision, for the progress line."""
    live = row.get("deploy")
    return "" if not live else f"; challenger v{live['version']} {live['outcome']} -> {live['action']}"
