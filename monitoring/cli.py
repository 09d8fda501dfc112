"""The ``viops`` command: the training and registry commands of ``pipelines.cli`` plus the monitoring commands.

The console script points here (``monitoring`` may use ``pipelines``; not the other way round).
``python -m monitoring.cli`` is the same command.
"""

from __future__ import annotations

import sys

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


def add_monitoring_commands(sub) -> None:
    p = sub.add_parser("simulate", help="write simulated production windows under a named scenario")
    add_common_arguments(p, config=False)
    p.add_argument("--config", required=True, help="scenario config (configs/scenarios/*.yaml)")
    p.add_argument("--out", required=True, help="window store directory (one Parquet partition per window)")
    p.set_defaults(func=_cmd_simulate)


def main(argv: list[str] | None = None) -> int:
    return _main(argv, extend=add_monitoring_commands)


if __name__ == "__main__":
    sys.exit(main())
