"""``viops stack up`` / ``down``: the distributed profile's services in dependency order."""

from __future__ import annotations

from viops.stack.components import (
    BIN,
    airflow_env,
    airflow_services,
    mlflow_service,
    monitoring_services,
)
from viops.stack.databases import drop_database, ensure_database
from viops.stack.profile import StackProfile
from viops.stack.services import Stack

__all__ = ["up", "down", "PARTS"]

#: What ``up`` can start: MLflow; Pushgateway, alert receiver, Alertmanager and Prometheus; Airflow with Celery.
PARTS = ("mlflow", "monitoring", "airflow")


def up(profile: StackProfile, parts: tuple[str, ...] = PARTS, timeout: float = 240.0) -> Stack:
    """Create the databases, then start and health-check each part's services (those that do not wait on each other
    side by side); returns the stack."""
    stack = Stack(profile)
    stack.dir.mkdir(parents=True, exist_ok=True)
    if "mlflow" in parts:
        ensure_database(profile.postgres, profile.databases.mlflow)
        stack.start(mlflow_service(profile), timeout)
    if "monitoring" in parts:
        stack.start_together(monitoring_services(profile, airflow="airflow" in parts), timeout)
    if "airflow" in parts:
        ensure_database(profile.postgres, profile.databases.airflow)
        env = airflow_env(profile)
        stack.run_once("airflow-db-migrate", [str(BIN / "airflow"), "db", "migrate"], env)
        # The api-server first: the other components report their health through it.
        api_server, *components = airflow_services(profile, env)
        stack.start(api_server, timeout)
        stack.start_together(components, timeout)
    stack.record(parts=list(parts), urls={name: entry["url"] for name, entry in stack.describe().items()
                                          if entry["url"]},
                 executor="CeleryExecutor" if "airflow" in parts else None,
                 databases=profile.databases.model_dump(), postgres=profile.postgres, redis=profile.redis)
    return stack


def down(profile: StackProfile, *, drop_databases: bool = False) -> list[str]:
    """Stop every service of the stack folder; with ``drop_databases`` also drop its PostgreSQL databases."""
    stopped = Stack(profile).stop()
    if drop_databases:
        for name in (profile.databases.mlflow, profile.databases.airflow):
            drop_database(profile.postgres, name)
    return stopped
