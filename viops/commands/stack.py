"""``viops stack up | down | status``: the distributed profile on this machine (configs/profiles/distributed)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from viops.commands.common import EXIT_BAD_INPUT, EXIT_INFRASTRUCTURE

__all__ = ["add_commands"]


def _profile(args):
    from viops.stack import load_profile

    profile = load_profile(args.profile)
    return profile.model_copy(update={"dir": Path(args.dir)}) if args.dir else profile


def _cmd_stack(args) -> int:
    from viops.stack.run import PARTS, down, up
    from viops.stack.services import Stack, StackError

    profile = _profile(args)
    if args.action == "up":
        parts = tuple(p.strip() for p in args.only.split(",")) if args.only else PARTS
        unknown = sorted(set(parts) - set(PARTS))
        if unknown:
            print(f"error: --only {','.join(unknown)}: the parts are {', '.join(PARTS)}", file=sys.stderr)
            return EXIT_BAD_INPUT
        try:
            stack = up(profile, parts)
        except StackError as exc:
            print(f"error: {exc}\n(the services that did start still run: viops stack down)", file=sys.stderr)
            return EXIT_INFRASTRUCTURE
        except OSError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_INFRASTRUCTURE
        print(json.dumps(stack.describe(), indent=2))
        return 0
    if args.action == "down":
        try:
            stopped = down(profile, drop_databases=args.drop_databases)
        except StackError as exc:  # the services are stopped; the databases could not be dropped
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_INFRASTRUCTURE
        print(f"stopped: {', '.join(stopped) or 'nothing was running'}", file=sys.stderr)
        return 0
    print(json.dumps(Stack(profile).describe(), indent=2))
    return 0


def add_commands(sub) -> None:
    """Add the stack command to the ``viops`` parser."""
    p = sub.add_parser("stack", help="start, stop or list the distributed profile's services on this machine")
    p.add_argument("action", choices=("up", "down", "status"), help="up: start and health-check; down: stop; "
                                                                     "status: what runs")
    p.add_argument("--profile", help="profile file (default configs/profiles/distributed/stack.yaml)")
    p.add_argument("--dir", help="stack folder: logs, pids, data (default: the profile's dir, .stack)")
    p.add_argument("--only", help="up: a comma-separated subset of mlflow,monitoring,airflow (default all)")
    p.add_argument("--drop-databases", action="store_true", help="down: also drop the profile's PostgreSQL "
                                                                 "databases (everything tracked and scheduled)")
    p.set_defaults(func=_cmd_stack)
