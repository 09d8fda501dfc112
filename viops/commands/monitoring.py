"""``viops simulate | monitor | alerts | dashboards | alert-receiver``: production windows, one window through
checks, SLOs, metrics and decision, the Prometheus alert rules rendered from the SLOs, the Grafana dashboards, and
the webhook that turns the alerts Alertmanager routes into remediation runs in Airflow."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from monitoring import DEFAULT_CHECKS, DEFAULT_RUNBOOKS, DEFAULT_SLOS
from viops.commands.common import EXIT_BAD_INPUT, EXIT_INFRASTRUCTURE, EXIT_REJECTED, REPO, common, emit


def _cmd_simulate(args) -> int:
    from monitoring.scenarios import load_scenario, simulate

    scenario, training = load_scenario(args.config)
    store = simulate(scenario, training, args.out)
    windows = store.windows()
    payload = {"scenario": scenario.name, "kind": scenario.scenario, "out": str(store.root.resolve()),
               "windows": [store.meta(w) for w in windows]}
    affected = sum(1 for w in payload["windows"] if w.get("affected"))
    emit(payload, args.json, f"wrote {len(windows)} windows of {scenario.rows_per_window} rows "
                              f"({scenario.scenario}, {affected} affected) to {store.root}")
    return 0


def _cmd_monitor(args) -> int:
    from monitoring.monitor import monitor_files
    from pipelines.registry.audit import default_actor

    result = monitor_files(
        model=args.model, window_path=args.window, tracking_uri=args.tracking_uri, alias=args.alias,
        window_id=args.window_id, checks=args.checks, slo=args.slo, runbooks=args.runbooks, state_dir=args.state_dir,
        pushgateway=args.pushgateway, textfile=args.textfile, execute=args.execute, dispatched=args.dispatched,
        actor=args.actor or default_actor(), drift_report=not args.no_drift_report,
        deploy_dispatched=args.deploy_dispatched,
    )
    decision = result["decision"]
    breached = [s["name"] for s in result["slo"] if s["status"] == "breach"]
    human = (f"{args.model}@{args.alias} v{result['version']} window {result['window']}: "
             f"drift share {result['drift']['share'] if result['drift'] else 'n/a'}, "
             f"breached {', '.join(breached) or 'nothing'} -> {decision['action']}"
             + (f" ({decision['runbook']})" if decision["runbook"] else "") + f": {decision['reason']}"
             + (f"\n  drift report: {result['drift_report']}" if result["drift_report"] else ""))
    live = result.get("deploy")
    if live and live.get("error"):
        human += f"\n  {live['error']}"
    elif live:
        shadow = live["decision"]
        human += f"\n  challenger v{shadow['version']} in {live['stage']} -> {shadow['action']}: {shadow['reason']}"
    emit(result, args.json, human)
    return _fail_on(args.fail_on, decision["action"])


def _fail_on(level: str | None, action: str) -> int:
    """``--fail-on LEVEL``: exit 1 when the decision is LEVEL or stronger (none < ticket < page < retrain <
    rollback), so a shell script or a CI job can stop on it; 0 otherwise. The decision is printed either way."""
    from monitoring.metrics import DECISIONS

    if level is None or DECISIONS.index(action) < DECISIONS.index(level):
        return 0
    return EXIT_REJECTED


def _cmd_alerts(args) -> int:
    from monitoring.alerts import dump, render_rules
    from monitoring.slo import load_slos

    text = dump(render_rules(load_slos(args.slo)))
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote the alert rules of {args.slo} to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _cmd_dashboards(args) -> int:
    import time

    from monitoring.dashboards import VIEWS, dump

    out = Path(args.out)
    if args.snapshot:
        from monitoring.dashboard_snapshots import snapshot_all

        end = time.time()
        try:
            paths = snapshot_all(args.snapshot, end - args.since, end, out)
        except (OSError, RuntimeError) as exc:  # unreachable, or a query Prometheus refused
            print(f"error: snapshots from Prometheus at {args.snapshot}: {exc}", file=sys.stderr)
            return EXIT_INFRASTRUCTURE
    else:
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for view in VIEWS:
            paths.append(out / f"{view.uid}.json")
            paths[-1].write_text(dump(view))
    print("\n".join(str(p) for p in paths))
    return 0


def _cmd_alert_receiver(args) -> int:
    import uvicorn

    from monitoring.receiver import ReceiverSettings, create_app
    from monitoring.receiver.airflow_api import AirflowAPI

    token = os.environ.get("VIOPS_ALERT_RECEIVER_TOKEN", "")
    if not token:
        print("error: set VIOPS_ALERT_RECEIVER_TOKEN to the bearer token Alertmanager sends (alertmanager.yml: "
              "http_config.authorization); the receiver does not run unauthenticated", file=sys.stderr)
        return EXIT_BAD_INPUT
    airflow = None
    if args.airflow_url:
        airflow = AirflowAPI(args.airflow_url, os.environ.get("VIOPS_AIRFLOW_USERNAME") or None,
                             os.environ.get("VIOPS_AIRFLOW_PASSWORD") or None)
    app = create_app(ReceiverSettings(token=token, state_dir=Path(args.state_dir), runbooks_dir=Path(args.runbooks),
                                      airflow=airflow, dag_id=args.dag_id))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def add_commands(sub) -> None:
    """Add the simulate, monitor, alerts, dashboards and alert-receiver commands to the ``viops`` parser."""
    p = sub.add_parser("simulate", help="write simulated production windows under a named scenario")
    common(p, config=False)
    p.add_argument("--config", required=True, help="scenario config (configs/scenarios/*.yaml)")
    p.add_argument("--out", required=True, help="window store directory (one Parquet partition per window)")
    p.set_defaults(func=_cmd_simulate)
    p = sub.add_parser("monitor", help="check one window against the champion, evaluate SLOs, push metrics, decide")
    common(p, config=False)
    p.add_argument("--model", required=True, help="registered model name")
    p.add_argument("--window", required=True, help="CSV/Parquet window: features, and labels/predictions if known")
    p.add_argument("--window-id", help="window id (default: its window=... partition, else the file name)")
    p.add_argument("--alias", default="champion", help="the alias to watch (default champion)")
    p.add_argument("--checks", default=str(DEFAULT_CHECKS), help="monitoring config")
    p.add_argument("--slo", default=str(DEFAULT_SLOS), help="SLO file")
    p.add_argument("--runbooks", default=str(DEFAULT_RUNBOOKS), help="runbook directory")
    p.add_argument("--state-dir", help="SLO history, incidents and metrics file (default: .viops-monitor beside "
                                       "the window)")
    p.add_argument("--pushgateway", default=os.environ.get("VIOPS_PUSHGATEWAY"),
                   help="Pushgateway URL (default $VIOPS_PUSHGATEWAY; else metrics go to a text file)")
    p.add_argument("--textfile", help="metrics text file (default: <state dir>/<model>@<alias>.prom)")
    p.add_argument("--execute", action="store_true",
                   help="carry out the decision now: roll back, or retrain on the data plus this window and gate")
    p.add_argument("--dispatched", action="store_true",
                   help="the caller carries out a decided retrain/rollback (as the vi_monitoring DAG does): count it "
                        "for cooldowns; without this or --execute such a decision is recorded as pending")
    p.add_argument("--deploy-dispatched", action="store_true",
                   help="the caller carries out a decided promotion or rejection of the challenger in shadow (as the "
                        "vi_monitoring DAG does, whether or not it acts on the champion's decision)")
    p.add_argument("--actor", help="who acts (default $VIOPS_ACTOR, else the OS user)")
    p.add_argument("--fail-on", choices=("ticket", "page", "retrain", "rollback"),
                   help="exit 1 when the decision is this or stronger (none < ticket < page < retrain < rollback); "
                        "default: exit 0 whatever is decided")
    p.add_argument("--no-drift-report", action="store_true",
                   help="do not write the window's Evidently drift report beside it (drift_report.html in its store "
                        "partition; an incident's MLflow run gets the report either way)")
    p.add_argument("--tracking-uri")
    p.set_defaults(func=_cmd_monitor)
    p = sub.add_parser("alerts", help="render the Prometheus alert rules from the SLO file")
    p.add_argument("--slo", default=str(DEFAULT_SLOS), help="SLO file (default configs/slo.yaml)")
    p.add_argument("--out", help="rules file to write (default: stdout), e.g. monitoring/prometheus/alerts.yml")
    p.set_defaults(func=_cmd_alerts)
    p = sub.add_parser("dashboards", help="write the Grafana dashboards (executive, on-call, debug) as JSON, or PNG "
                                          "snapshots of them drawn from a Prometheus")
    p.add_argument("--out", default=str(REPO / "monitoring" / "grafana" / "dashboards"),
                   help="folder to write into (default monitoring/grafana/dashboards)")
    p.add_argument("--snapshot", metavar="PROMETHEUS_URL", help="draw each dashboard's panels from this Prometheus "
                                                                "into PNG files instead")
    p.add_argument("--since", type=float, default=3600.0, help="snapshot: seconds of history to draw (default 3600)")
    p.set_defaults(func=_cmd_dashboards)
    p = sub.add_parser("alert-receiver", help="serve the Alertmanager webhook that triggers runbook remediation in "
                                              "Airflow (bearer token: $VIOPS_ALERT_RECEIVER_TOKEN)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=9095, help="port (default 9095)")
    p.add_argument("--state-dir", default=".viops-alerts", help="where alerts.jsonl (every alert received, with "
                                                               "what was done) is kept (default .viops-alerts)")
    p.add_argument("--airflow-url", default=os.environ.get("VIOPS_AIRFLOW_URL"),
                   help="Airflow api-server to trigger the DAG in (default $VIOPS_AIRFLOW_URL; credentials from "
                        "$VIOPS_AIRFLOW_USERNAME and $VIOPS_AIRFLOW_PASSWORD); none: record only")
    p.add_argument("--dag-id", default="vi_monitoring", help="DAG that re-monitors the alert's window and carries "
                                                             "out the decision (default vi_monitoring)")
    p.add_argument("--runbooks", default=str(DEFAULT_RUNBOOKS), help="runbook directory")
    p.set_defaults(func=_cmd_alert_receiver)
