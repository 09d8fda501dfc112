"""Production windows to decisions: the window store, the checks against the champion, SLOs, Prometheus metrics
and alert rules, runbooks, the decision engine and incidents (docs/monitoring.md)."""

from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent
#: What ``viops monitor`` and the vi_monitoring DAG read unless told otherwise.
DEFAULT_CHECKS, DEFAULT_SLOS = _REPO / "configs" / "monitoring.yaml", _REPO / "configs" / "slo.yaml"
DEFAULT_RUNBOOKS = _REPO / "runbooks"
