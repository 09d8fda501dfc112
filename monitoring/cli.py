"""The ``viops`` command: the training and registry commands of ``pipelines.cli`` plus the monitoring commands.

The console script points here (``monitoring`` may use ``pipelines``; not the other way round).
``python -m monitoring.cli`` is the same command.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pipelines.cli import _emit, add_common_arguments
from pipelines.cli import main as _main

__all__ = ["main"]


def _cmd_simulate(args) -> int:
    from monitoring.scenarios import load_scenario, simulate

    scenario, training = load_scenario(args.config)
    store = simulate(scenario, training, args.out)
    windows = store.windows()
    payload = {"scenario": scenario.name, "kind": scenario.scenario, "out": str(store.root.resolve()),
               "windows": [store.meta(w) for w in windows]}
    affected = sum(1 for w in payload["windows"] if w.get("affected"))
    _emit(payload, args.json, f"wrote {len(windows)} windows of {scenario.rows_per_window} rows "
                              f"({scenario.scenario}, {affected} affected) to {store.root}")
    return 0


def _cmd_monitor(args) -> int:
    from mlflow import MlflowClient

    from monitoring.config import load_checks_config
    from monitoring.monitor import run_monitor
    from monitoring.runbooks import load_runbooks
    from monitoring.slo import load_slos
    from pipelines.audit import default_actor
    from pipelines.training import resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    result = run_monitor(
        client, model=args.model, window_path=args.window, tracking_uri=uri, alias=args.alias,
        window_id=args.window_id, checks=load_checks_config(args.checks), slos=load_slos(args.slo),
        runbooks=load_runbooks(args.runbooks), state_dir=args.state_dir, pushgateway=args.pushgateway,
        textfile=args.textfile, execute=args.execute, actor=args.actor or default_actor(),
    )
    decision = result["decision"]
    breached = [s["name"] for s in result["slo"] if s["status"] == "breach"]
    human = (f"{args.model}@{args.alias} v{result['version']} window {result['window']}: "
             f"drift share {result['drift']['share'] if result['drift'] else 'n/a'}, "
             f"breached {', '.join(breached) or 'nothing'} -> {decision['action']}"
             + (f" ({decision['runbook']})" if decision["runbook"] else "") + f": {decision['reason']}")
    _emit({**result, "tracking_uri": uri}, args.json, human)
    return 0


def add_monitoring_commands(sub) -> None:
    p = sub.add_parser("simulate", help="write simulated production windows under a named scenario")
    add_common_arguments(p, config=False)
    p.add_argument("--config", required=True, help="scenario config (configs/scenarios/*.yaml)")
    p.add_argument("--out", required=True, help="window store directory (one Parquet partition per window)")
    p.set_defaults(func=_cmd_simulate)

    repo = Path(__file__).resolve().parent.parent
    p = sub.add_parser("monitor", help="check one window against the champion, evaluate SLOs, push metrics, decide")
    add_common_arguments(p, config=False)
    p.add_argument("--model", required=True, help="registered model name")
    p.add_argument("--window", required=True, help="CSV/Parquet window: features, and labels/predictions if known")
    p.add_argument("--window-id", help="window id (default: its window=... partition, else the file name)")
    p.add_argument("--alias", default="champion", help="the alias to watch (default champion)")
    p.add_argument("--checks", default=str(repo / "configs" / "monitoring.yaml"), help="monitoring config")
    p.add_argument("--slo", default=str(repo / "configs" / "slo.yaml"), help="SLO file")
    p.add_argument("--runbooks", default=str(repo / "runbooks"), help="runbook directory")
    p.add_argument("--state-dir", help="SLO history, incidents and metrics file (default: .viops-monitor beside "
                                       "the window)")
    p.add_argument("--pushgateway", default=os.environ.get("VIOPS_PUSHGATEWAY"),
                   help="Pushgateway URL (default $VIOPS_PUSHGATEWAY; else metrics go to a text file)")
    p.add_argument("--textfile", help="metrics text file (default: <state dir>/<model>@<alias>.prom)")
    p.add_argument("--execute", action="store_true",
                   help="carry out the decision now: roll back, or retrain on the data plus this window and gate")
    p.add_argument("--actor", help="who acts (default $VIOPS_ACTOR, else the OS user)")
    p.add_argument("--tracking-uri")
    p.set_defaults(func=_cmd_monitor)


def main(argv: list[str] | None = None) -> int:
    return _main(argv, extend=add_monitoring_commands)


if __name__ == "__main__":
    sys.exit(main())
