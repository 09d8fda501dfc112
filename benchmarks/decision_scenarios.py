"""The monitor's decisions on every simulated scenario of the demo model: the table in docs/monitoring.md#scenarios.

    python benchmarks/decision_scenarios.py [--seed 7] [--out decisions.md]

Trains the demo model (configs/demo/blr_diabetes.yaml) on a local SQLite tracking store, simulates each scenario
with the given seed (not the shipped one), replays its windows through the monitor as the vi_monitoring DAG runs
it (decided retrains and rollbacks count as dispatched) and prints, per scenario, the first action and its window,
what the issue-level expectation is, and the false alarms: non-``none`` decisions before the change starts.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

#: scenario config, windows, what a user expects
SCENARIOS = [
    ("diabetes_stable", 30, "at most 1 decision in 30 windows"),
    ("diabetes_small_windows", 12, "nothing (too little evidence): 0 pages, 0 retrains"),
    ("diabetes_empty", 12, "ticket at w6, page from the 3rd empty window"),
    ("diabetes_low_volume", 12, "ticket while the feed is thin"),
    ("diabetes_single_feature", 12, "retrain at w6 or w7"),
    ("diabetes_irrelevant_feature", 12, "no retrain, no page"),
    ("diabetes_gradual", 20, "action by w14 (0.5 SD reached at w10)"),
    ("diabetes_label_noise", 12, "retrain at w6"),
    ("diabetes_concept_shift", 12, "retrain at w6"),
    ("diabetes_covariate_shift", 12, "retrain at w6"),
    ("diabetes_nan_burst", 12, "page at w6, never retrain"),
]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7, help="scenario seed (the shipped configs use 0)")
    parser.add_argument("--out", help="also write the markdown table here")
    args = parser.parse_args(argv)
    from viops.cli import quiet_libraries

    quiet_libraries()  # Lightning's and MLflow's start-up lines (and its progress bars), as in `viops monitor`
    from mlflow import MlflowClient

    from monitoring.checks.config import load_checks_config
    from monitoring.replay import first_action, replay
    from monitoring.runbooks import load_runbooks
    from monitoring.scenarios import load_scenario, simulate
    from monitoring.slo import load_slos
    from pipelines.config.loading import load_config
    from pipelines.lifecycle.train import train

    root = Path(tempfile.mkdtemp(prefix="viops-decisions-"))
    uri = f"sqlite:///{root / 'mlflow.db'}"
    os.environ["VIOPS_AUDIT_LOG"] = str(root / "audit.jsonl")
    os.chdir(root)
    train(load_config(REPO / "configs" / "demo" / "blr_diabetes.yaml"), tracking_uri=uri)
    client = MlflowClient(uri, uri)
    options = dict(checks=load_checks_config(REPO / "configs" / "monitoring.yaml"),
                   slos=load_slos(REPO / "configs" / "slo.yaml"), runbooks=load_runbooks(REPO / "runbooks"))
    lines = [f"| scenario (seed {args.seed}) | windows | expected | first action | false alarms before w6 | "
             "decisions (window: action) |", "|---|---|---|---|---|---|"]
    for name, windows, expected in SCENARIOS:
        scenario, training = load_scenario(REPO / "configs" / "scenarios" / f"{name}.yaml")
        out = root / name
        simulate(scenario.model_copy(update={"seed": args.seed, "windows": windows}), training, out)
        began = time.perf_counter()
        decisions = replay(client, model="blr-diabetes", store=out, tracking_uri=uri, state_dir=out / ".state",
                           **options)
        first = first_action(decisions)
        start = scenario.start if scenario.scenario != "stable" else windows
        false_alarms = sum(d.action != "none" for d in decisions[:start])
        shown = ", ".join(f"w{d.index}: {d.action}" + (f" ({d.alert})" if d.alert else "")
                          for d in decisions if d.action != "none") or "none"
        first_text = f"{first.action} at w{first.index} ({first.alert})" if first else "none"
        lines.append(f"| {name.removeprefix('diabetes_')} | {windows} | {expected} | {first_text} | {false_alarms} | "
                     f"{shown} |")
        print(lines[-1], f"({time.perf_counter() - began:.0f} s)", file=sys.stderr, flush=True)
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
