"""Production windows to decisions: the window store, the checks against the champion, SLOs, Prometheus metrics
and alert rules, runbooks, the decision engine and incidents (docs/monitoring.md)."""
