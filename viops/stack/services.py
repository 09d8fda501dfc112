"""Start, health-check and stop the stack's processes; ``stack.json`` in the stack folder says what runs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from viops.stack.profile import StackProfile

__all__ = ["Service", "Stack", "StackError"]


class StackError(RuntimeError):
    """A service did not start or did not become healthy; the message ends with its log's tail."""


@dataclass
class Service:
    """One long-running process. Healthy when ``health`` (a URL) answers 200, when ``ready_line`` appears in its
    log (Celery workers have no HTTP endpoint), or when ``check`` says so (Airflow's components, through the
    api-server's health endpoint)."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(repr=False)
    health: str | None = None
    ready_line: str | None = None
    check: Callable[[], bool] | None = field(default=None, repr=False)
    url: str | None = None
    port: int | None = None  # must be free before the start: a health check must not be answered by another process


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (reaping it first when it is a child of this process that has exited)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def _tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def _in_use(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Stack:
    """The processes of one stack folder. ``up`` starts what is not running yet, in dependency order, each group
    healthy before the next (:meth:`start_together`); ``down`` stops them all (process groups: a service's children
    go with it)."""

    def __init__(self, profile: StackProfile):
        self.profile = profile
        self.dir = profile.dir.resolve()
        self.logs = self.dir / "logs"
        self.state_file = self.dir / "stack.json"

    def state(self) -> dict:
        return json.loads(self.state_file.read_text()) if self.state_file.exists() else {"services": {}}

    def _save(self, state: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps(state, indent=2))

    def running(self, name: str) -> bool:
        pid = self.state()["services"].get(name, {}).get("pid")
        return pid is not None and _alive(pid)

    def start(self, service: Service, timeout: float = 180.0) -> None:
        """Start ``service`` (unless it already runs) and wait until it is healthy."""
        self.start_together([service], timeout)

    def start_together(self, services: list[Service], timeout: float = 180.0) -> None:
        """Start those of ``services`` that are not running yet, side by side, and wait until every one is healthy:
        for services that do not wait on each other (Airflow's scheduler, DAG processor, triggerer and workers
        spend their start-up importing Airflow, which then overlaps)."""
        group = time.time_ns()  # stop() stops the services of one start together
        starting = [self._launch(service, group) for service in services if not self.running(service.name)]
        deadline = time.monotonic() + timeout
        while starting:
            starting = [launched for launched in starting if not self._healthy(*launched)]
            if not starting:
                return
            if time.monotonic() > deadline:
                service, _, log, _ = starting[0]
                raise StackError(f"{service.name} was not healthy within {timeout:.0f} s "
                                 f"({service.health or service.ready_line or 'its check'}); {log}:\n{_tail(log)}")
            time.sleep(0.5)

    def _launch(self, service: Service, group: int) -> tuple[Service, subprocess.Popen, Path, int]:
        if service.port is not None and _in_use(service.port):
            raise StackError(f"{service.name}: port {service.port} is already in use (another stack? `viops stack "
                             f"status --dir ...`; or change ports in the profile)")
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{service.name}.log"
        offset = log.stat().st_size if log.exists() else 0
        with open(log, "ab") as out:
            proc = subprocess.Popen(service.argv, env=service.env, cwd=self.dir, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        state = self.state()
        state["services"][service.name] = {"pid": proc.pid, "url": service.url, "log": str(log),
                                           "argv": service.argv, "started_at": time.time(), "group": group}
        self._save(state)
        return service, proc, log, offset

    @staticmethod
    def _healthy(service: Service, proc: subprocess.Popen, log: Path, offset: int) -> bool:
        if proc.poll() is not None:
            raise StackError(f"{service.name} exited with {proc.returncode} while starting; {log}:\n{_tail(log)}")
        if service.health and _answers(service.health):
            return True
        if service.ready_line and service.ready_line in log.read_text(errors="replace")[offset:]:
            return True
        return service.check is not None and service.check()

    def run_once(self, name: str, argv: list[str], env: dict[str, str], timeout: float = 600.0) -> None:
        """A one-shot step (``airflow db migrate``), logged like a service; fails with its log's tail."""
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{name}.log"
        with open(log, "ab") as out:
            done = subprocess.run(argv, env=env, cwd=self.dir, stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
        if done.returncode != 0:
            raise StackError(f"{name} failed with {done.returncode}; {log}:\n{_tail(log)}")

    def stop(self, timeout: float = 30.0) -> list[str]:
        """Stop every service, newest first: the services started together stop together (SIGTERM to each one's
        process group, SIGKILL to those still running after ``timeout``), and each group is gone before the one
        started before it is signalled."""
        state = self.state()
        groups: dict[object, list[tuple[str, int]]] = {}
        for name, entry in state["services"].items():
            groups.setdefault(entry.get("group", name), []).append((name, entry.get("pid")))
        stopped = []
        for members in reversed(list(groups.values())):
            signalled = []
            for name, pid in reversed(members):
                try:
                    os.killpg(pid, signal.SIGTERM)
                except (OSError, TypeError):
                    continue
                signalled.append((name, pid))
            deadline = time.monotonic() + timeout
            running = signalled
            while running and time.monotonic() < deadline:
                running = [(name, pid) for name, pid in running if _alive(pid)]
                if running:
                    time.sleep(0.2)
            for _, pid in running:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except OSError:
                    pass
            stopped += [name for name, _ in signalled]
        self._save({**state, "services": {}})
        return stopped

    def describe(self) -> dict:
        """Each service: pid, URL, log and whether it runs."""
        return {name: {**{k: entry.get(k) for k in ("pid", "url", "log")}, "running": self.running(name)}
                for name, entry in self.state()["services"].items()}

    def record(self, **facts) -> None:
        """Facts about the stack that tests and the cluster demo read (URLs, executor, databases)."""
        state = self.state()
        state.update(facts)
        self._save(state)
