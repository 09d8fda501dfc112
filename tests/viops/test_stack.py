"""The distributed profile's files: the shipped profile validates, its rendered Prometheus and Alertmanager configs
pass promtool and amtool, and a port taken by another process stops ``viops stack up`` before a health check could
be answered by the wrong service."""

import os
import shutil
import socket
import subprocess

import pytest

from pipelines.config.base import ConfigError
from tests.conftest import free_port, require
from viops.stack import Stack, load_profile
from viops.stack.components import airflow_env, monitoring_services
from viops.stack.profile import PROFILE_DIR
from viops.stack.services import Service, StackError


def test_the_shipped_profile_validates_and_unknown_keys_are_refused(tmp_path):
    profile = load_profile()
    assert [w.queues for w in profile.workers] == [["default"], ["gpu"]]
    bad = tmp_path / "stack.yaml"
    bad.write_text("dir: x\nportz: {}\n")
    with pytest.raises(ConfigError, match="portz"):
        load_profile(bad)


def test_rendered_configs_pass_promtool_and_amtool(tmp_path):
    require(shutil.which("promtool") and shutil.which("amtool"), "promtool/amtool are not installed (Debian "
            "packages prometheus, prometheus-alertmanager)")
    profile = load_profile().model_copy(update={"dir": tmp_path})
    services = {s.name: s for s in monitoring_services(profile)}
    prometheus = next(a.split("=", 1)[1] for a in services["prometheus"].argv if a.startswith("--config.file="))
    alertmanager = next(a.split("=", 1)[1] for a in services["alertmanager"].argv if a.startswith("--config.file="))
    for argv in (["promtool", "check", "config", prometheus], ["amtool", "check-config", alertmanager],
                 ["promtool", "check", "config", str(PROFILE_DIR / "prometheus.yml")]):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
    token = (tmp_path / "secrets" / "alert-receiver.token")
    assert token.stat().st_mode & 0o077 == 0  # only its owner reads the receiver's token


def test_airflow_gets_every_setting_of_the_shipped_airflow_cfg(tmp_path):
    profile = load_profile().model_copy(update={"dir": tmp_path})
    env = airflow_env(profile)
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql+psycopg2://")
    assert env["AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT"] == "21600"
    assert env["VIOPS_TRAIN_QUEUE"] == "gpu" and env["VIOPS_MONITOR_SCHEDULE"] == "none"
    assert airflow_env(profile)["AIRFLOW__API_AUTH__JWT_SECRET"] == env["AIRFLOW__API_AUTH__JWT_SECRET"]  # kept


def test_a_port_in_use_stops_the_start_with_a_clear_error(tmp_path):
    profile = load_profile().model_copy(update={"dir": tmp_path})
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        service = Service("pushgateway", ["sleep", "30"], {}, health=f"http://127.0.0.1:{port}/-/ready", port=port)
        with pytest.raises(StackError, match=f"port {port} is already in use"):
            Stack(profile).start(service)
    assert Stack(profile).describe() == {}  # nothing was started


def test_a_service_that_exits_at_start_fails_with_its_log(tmp_path):
    profile = load_profile().model_copy(update={"dir": tmp_path})
    service = Service("broken", ["sh", "-c", "echo cannot bind; exit 3"], {"PATH": "/usr/bin:/bin"},
                      health=f"http://127.0.0.1:{free_port()}/", port=None)
    with pytest.raises(StackError, match="exited with 3 while starting(.|\n)*cannot bind"):
        Stack(profile).start(service, timeout=20)
    Stack(profile).stop()


def _exited(pid: int) -> bool:
    """Whether a child of this process has exited (reaped here, or already by the stack)."""
    try:
        return os.waitpid(pid, os.WNOHANG)[0] == pid
    except ChildProcessError:
        return True


def test_services_started_together_run_side_by_side_and_stop_together(tmp_path):
    # Each is healthy only once the other has started: one after the other, the first would never be.
    profile = load_profile().model_copy(update={"dir": tmp_path})
    env = {"PATH": "/usr/bin:/bin"}
    a = Service("a", ["sh", "-c", "touch started-a; exec sleep 60"], env, check=(tmp_path / "started-b").exists)
    b = Service("b", ["sh", "-c", "touch started-b; exec sleep 60"], env, check=(tmp_path / "started-a").exists)
    stack = Stack(profile)
    try:
        stack.start_together([a, b], timeout=30)
        assert all(entry["running"] for entry in stack.describe().values()) and len(stack.describe()) == 2
        stack.start_together([a, b], timeout=1)  # already running: nothing is started again
        assert len(stack.describe()) == 2
        stack.start(Service("later", ["sh", "-c", "exec sleep 60"], env, check=(tmp_path / "started-a").exists))
        pids = [entry["pid"] for entry in stack.state()["services"].values()]
    finally:
        # Newest first; the two started together are signalled together, once the later one is gone.
        assert stack.stop() == ["later", "b", "a"]
    assert all(_exited(pid) for pid in pids) and stack.describe() == {}
    c = Service("c", ["sh", "-c", "exec sleep 60"], env, check=(tmp_path / "never").exists)
    with pytest.raises(StackError, match="c was not healthy within 1 s"):
        Stack(profile).start_together([c], timeout=1)
    Stack(profile).stop()


def test_stack_up_without_postgresql_fails_in_one_line(tmp_path, capsys):
    from viops.cli import main

    profile = tmp_path / "stack.yaml"
    profile.write_text(f"dir: {tmp_path / 'stack'}\npostgres: postgresql://postgres@127.0.0.1:{free_port()}\n")
    code = main(["stack", "up", "--only", "mlflow", "--profile", str(profile)])
    err = capsys.readouterr().err
    assert code == 4 and "PostgreSQL at postgresql://postgres@127.0.0.1" in err and "unreachable" in err, err
    assert "Traceback" not in err
