"""``viops stack``: the distributed profile (configs/profiles/distributed) run as separate processes on one machine.

MLflow on PostgreSQL with proxied artifacts, Airflow 3 with the CeleryExecutor (Redis broker, PostgreSQL metadata
and results) and a ``gpu`` queue worker, Pushgateway -> Prometheus (the generated alert rules) -> Alertmanager ->
``viops alert-receiver`` -> Airflow. Each service is started, health-checked and logged to ``<dir>/logs``;
``stack.json`` in the stack folder records what runs, its pid and URL, for ``viops stack down`` and the tests.
"""

from viops.stack.profile import StackProfile, load_profile
from viops.stack.services import Stack

__all__ = ["StackProfile", "load_profile", "Stack"]
