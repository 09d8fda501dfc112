"""``viops alert-receiver``: the Alertmanager webhook that turns alerts Prometheus fired into runbook remediation.

Alertmanager posts each notification (a group of alerts) to ``POST /alerts`` with a bearer token. The receiver
authenticates it, records every alert it has not seen (deduplicated by fingerprint and ``startsAt``: a repeat
notification of the same firing is recorded once) with what its runbook says, and triggers ``vi_monitoring`` in
Airflow through the REST API for the alert's window. That run re-monitors the window with the decision engine
(which knows the preconditions, cooldowns and history the runbooks ask about), so an alert Prometheus fired and
``viops monitor`` take the same decision, and carries it out. The run id is derived from the model, the serving
alias and the window, so several alerts on one window (or a retried notification, or an alert about a live
challenger, which the same run judges) start one run.
"""

from monitoring.receiver.webhook import ReceiverSettings, create_app

__all__ = ["ReceiverSettings", "create_app"]
