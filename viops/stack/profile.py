"""The distributed profile's settings (``configs/profiles/distributed/stack.yaml``), validated."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import Field, ValidationError

from pipelines.config.base import ConfigError, StrictModel

__all__ = ["StackProfile", "Ports", "Worker", "load_profile", "PROFILE_DIR"]

PROFILE_DIR = Path(__file__).resolve().parents[2] / "configs" / "profiles" / "distributed"


class Ports(StrictModel):
    airflow: int = 8080
    mlflow: int = 5000
    pushgateway: int = 9091
    prometheus: int = 9090
    alertmanager: int = 9093
    alert_receiver: int = 9095


class Databases(StrictModel):
    airflow: str = Field("viops_airflow", pattern=r"^[a-z_][a-z0-9_]*$")
    mlflow: str = Field("viops_mlflow", pattern=r"^[a-z_][a-z0-9_]*$")


class Worker(StrictModel):
    name: str = Field(pattern=r"^[a-z][a-z0-9-]*$")
    queues: list[str] = Field(min_length=1)
    concurrency: int = Field(1, ge=1)


class Intervals(StrictModel):
    scrape_interval: str = "15s"
    evaluation_interval: str = "15s"


class Grouping(StrictModel):
    group_wait: str = "10s"
    group_interval: str = "1m"


class StackProfile(StrictModel):
    dir: Path = Path(".stack")
    host: str = "127.0.0.1"
    ports: Ports = Ports()
    postgres: str = "postgresql://postgres@127.0.0.1:5432"
    databases: Databases = Databases()
    redis: str = "redis://127.0.0.1:6379/0"
    workers: list[Worker] = Field(default_factory=lambda: [Worker(name="cpu", queues=["default"], concurrency=4),
                                                           Worker(name="gpu", queues=["gpu"])])
    prometheus: Intervals = Intervals()
    alertmanager: Grouping = Grouping()
    window_store: Path | None = None  # VIOPS_WINDOW_STORE of the DAGs; default <dir>/windows
    env: dict[str, str] = Field(default_factory=dict)  # more environment for every process (schedules ...)

    def windows(self) -> Path:
        return (self.window_store or self.dir / "windows").resolve()

    def url(self, service: str) -> str:
        return f"http://{self.host}:{getattr(self.ports, service)}"

    def database_url(self, name: str, driver: str = "postgresql") -> str:
        return f"{self.postgres.rstrip('/').replace('postgresql', driver, 1)}/{name}"


def load_profile(path: str | Path | None = None) -> StackProfile:
    """Read and check a profile file (default: the shipped ``stack.yaml``)."""
    path = Path(path) if path else PROFILE_DIR / "stack.yaml"
    try:
        return StackProfile.model_validate(yaml.safe_load(path.read_text()) or {})
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"stack profile {path}: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"stack profile {path}: {problems}") from None
