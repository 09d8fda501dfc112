"""What the distributed profile runs: each service's command line, environment and health check, with the shipped
config files (prometheus.yml, alertmanager.yml, airflow.cfg) rendered for the profile's addresses."""

from __future__ import annotations

import configparser
import json
import os
import secrets
import shutil
import socket
import sys
import urllib.request
from pathlib import Path

import yaml

from viops.stack.profile import PROFILE_DIR, StackProfile
from viops.stack.services import Service, StackError

__all__ = ["monitoring_services", "mlflow_service", "airflow_env", "airflow_services", "base_env", "secret",
           "REPO", "MONITORING", "AIRFLOW"]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MONITORING = ("pushgateway", "alert-receiver", "alertmanager", "prometheus")
AIRFLOW = ("airflow-api-server", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer")


def _binary(*names: str) -> str:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    raise StackError(f"{names[0]} is not installed (Debian package {names[0]!r}; apt-get install {names[0]})")


def secret(root: Path, name: str) -> str:
    """A random secret kept in the stack folder (mode 600), the same for every process and restart."""
    path = root / "secrets" / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(24))
        path.chmod(0o600)
    return path.read_text().strip()


def base_env(profile: StackProfile) -> dict[str, str]:
    """What every viops process of the stack sees: the tracking server, the Pushgateway, the training queue."""
    root = profile.dir.resolve()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update({
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        "PYTHONPATH": str(REPO),
        "MLFLOW_TRACKING_URI": profile.url("mlflow"),
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "VIOPS_PUSHGATEWAY": profile.url("pushgateway"),
        "VIOPS_WORK_DIR": str(root / "work"),
        "VIOPS_WINDOW_STORE": str(profile.windows()),
        **profile.env,
    })
    gpu = [w for w in profile.workers if "gpu" in w.queues]
    if gpu:
        env["VIOPS_TRAIN_QUEUE"] = "gpu"
    return env


def mlflow_service(profile: StackProfile) -> Service:
    """MLflow on PostgreSQL, artifacts proxied into the stack folder (as configs/.../mlflow-server.sh)."""
    root = profile.dir.resolve()
    argv = [str(BIN / "mlflow"), "server", "--host", profile.host, "--port", str(profile.ports.mlflow),
            "--workers", "2", "--backend-store-uri", profile.database_url(profile.databases.mlflow,
                                                                          "postgresql+psycopg2"),
            "--artifacts-destination", str(root / "mlflow-artifacts")]
    return Service("mlflow", argv, base_env(profile), health=f"{profile.url('mlflow')}/health",
                   url=profile.url("mlflow"), port=profile.ports.mlflow)


def _render_prometheus(profile: StackProfile, root: Path) -> Path:
    config = yaml.safe_load((PROFILE_DIR / "prometheus.yml").read_text())
    config["global"].update(profile.prometheus.model_dump())
    config["rule_files"] = [str((PROFILE_DIR / f).resolve()) for f in config["rule_files"]]
    config["scrape_configs"][0]["static_configs"] = [{"targets": [f"{profile.host}:{profile.ports.pushgateway}"]}]
    config["alerting"]["alertmanagers"] = [{"static_configs": [
        {"targets": [f"{profile.host}:{profile.ports.alertmanager}"]}]}]
    path = root / "config" / "prometheus.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _render_alertmanager(profile: StackProfile, root: Path, token: str) -> Path:
    config = yaml.safe_load((PROFILE_DIR / "alertmanager.yml").read_text())
    config["route"].update(profile.alertmanager.model_dump())
    token_file = root / "secrets" / "alert-receiver.token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = f"{profile.url('alert_receiver')}/alerts"
            hook["http_config"]["authorization"]["credentials_file"] = str(token_file)
    path = root / "config" / "alertmanager.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def monitoring_services(profile: StackProfile, *, airflow: bool = True) -> list[Service]:
    """Pushgateway, the alert receiver (triggering Airflow when ``airflow``), Alertmanager, Prometheus."""
    root = profile.dir.resolve()
    env, host, ports = base_env(profile), profile.host, profile.ports
    token = secret(root, "alert-receiver-token")
    receiver_env = {**env, "VIOPS_ALERT_RECEIVER_TOKEN": token}
    receiver = [str(BIN / "viops"), "alert-receiver", "--host", host, "--port", str(ports.alert_receiver),
                "--state-dir", str(root / "alert-receiver")]
    if airflow:
        receiver += ["--airflow-url", profile.url("airflow")]
        receiver_env.update({"VIOPS_AIRFLOW_USERNAME": "viops",
                             "VIOPS_AIRFLOW_PASSWORD": secret(root, "airflow-viops")})
    else:
        receiver_env.pop("VIOPS_AIRFLOW_URL", None)
    return [
        Service("pushgateway", [_binary("prometheus-pushgateway", "pushgateway"),
                                f"--web.listen-address={host}:{ports.pushgateway}",
                                f"--persistence.file={root / 'pushgateway.data'}"], env,
                health=f"{profile.url('pushgateway')}/-/ready", url=profile.url("pushgateway"), port=ports.pushgateway),
        Service("alert-receiver", receiver, receiver_env, health=f"{profile.url('alert_receiver')}/healthz",
                url=profile.url("alert_receiver"), port=ports.alert_receiver),
        Service("alertmanager", [_binary("prometheus-alertmanager", "alertmanager"),
                                 f"--config.file={_render_alertmanager(profile, root, token)}",
                                 f"--storage.path={root / 'alertmanager'}",
                                 f"--web.listen-address={host}:{ports.alertmanager}", "--cluster.listen-address="],
                env, health=f"{profile.url('alertmanager')}/-/ready", url=profile.url("alertmanager"),
                port=ports.alertmanager),
        Service("prometheus", [_binary("prometheus"), f"--config.file={_render_prometheus(profile, root)}",
                               f"--storage.tsdb.path={root / 'prometheus'}",
                               f"--web.listen-address={host}:{ports.prometheus}", "--web.enable-lifecycle"],
                env, health=f"{profile.url('prometheus')}/-/ready", url=profile.url("prometheus"),
                port=ports.prometheus),
    ]


def airflow_env(profile: StackProfile) -> dict[str, str]:
    """Every ``AIRFLOW__*`` setting of configs/profiles/distributed/airflow.cfg, with the profile's addresses."""
    root = profile.dir.resolve()
    home = root / "airflow"
    home.mkdir(parents=True, exist_ok=True)
    passwords = home / "simple_auth_manager_passwords.json.generated"
    passwords.write_text(json.dumps({"viops": secret(root, "airflow-viops")}) + "\n")
    passwords.chmod(0o600)
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(PROFILE_DIR / "airflow.cfg")
    env = base_env(profile)
    for section in cfg.sections():
        for key, value in cfg.items(section):
            env[f"AIRFLOW__{section.upper()}__{key.upper()}"] = value
    airflow_db = profile.database_url(profile.databases.airflow, "postgresql+psycopg2")
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{profile.url('airflow')}/execution/",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": airflow_db,
        "AIRFLOW__CELERY__BROKER_URL": profile.redis,
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + airflow_db,
        "AIRFLOW__API__HOST": profile.host,
        "AIRFLOW__API__PORT": str(profile.ports.airflow),
        "AIRFLOW__API__BASE_URL": profile.url("airflow"),
        "AIRFLOW__API_AUTH__JWT_SECRET": secret(root, "airflow-jwt"),
        "AIRFLOW__CORE__FERNET_KEY": _fernet(root),
    })
    return env


def _component_check(health_url: str, component: str):
    """Healthy once the api-server's health endpoint sees the component's heartbeat."""

    def check() -> bool:
        try:
            with urllib.request.urlopen(health_url, timeout=2) as resp:
                return json.loads(resp.read()).get(component, {}).get("status") == "healthy"
        except (OSError, ValueError):
            return False

    return check


def _fernet(root: Path) -> str:
    path = root / "secrets" / "airflow-fernet"
    if not path.exists():
        from cryptography.fernet import Fernet

        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(Fernet.generate_key().decode())
        path.chmod(0o600)
    return path.read_text().strip()


def airflow_services(profile: StackProfile, env: dict[str, str]) -> list[Service]:
    """api-server, scheduler, dag-processor, triggerer, and one Celery worker per profile worker."""
    airflow = str(BIN / "airflow")
    health = f"{profile.url('airflow')}/api/v2/monitor/health"
    services = [Service("airflow-api-server", [airflow, "api-server"], env, health=health, url=profile.url("airflow"),
                        port=profile.ports.airflow)]
    # Every process shares the stack's log folder, so the api-server reads task and trigger logs from disk: neither
    # the workers nor the triggerer start Airflow's log server, which would listen on every interface (0.0.0.0 and
    # [::], ports 8793 and 8794), outside the profile's host and ports.
    services += [Service(f"airflow-{name}", [airflow, name, *options], env, check=_component_check(health, component))
                 for name, component, options in (("scheduler", "scheduler", ()),
                                                  ("dag-processor", "dag_processor", ()),
                                                  ("triggerer", "triggerer", ("--skip-serve-logs",)))]
    for worker in profile.workers:
        name = f"{worker.name}@{socket.gethostname()}"  # Celery's node name; tasks tag their runs with it
        services.append(Service(f"airflow-worker-{worker.name}", [
            airflow, "celery", "worker", "--queues", ",".join(worker.queues), "--concurrency",
            str(worker.concurrency), "--celery-hostname", name, "--skip-serve-logs"],
            {**env, "VIOPS_WORKER_NAME": name}, ready_line=" ready."))
    return services
