"""Shared fixtures. ``VIOPS_REQUIRE_INTEGRATION=1`` (set by CI) turns "component missing" skips into failures."""

from __future__ import annotations

import atexit
import itertools
import os
import secrets
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import closing, contextmanager
from pathlib import Path

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Several test processes share the cores: one compute thread each (and in the commands they start), instead of
    # every process spreading its tensor operations over all cores at once.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import gc  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from pipelines.frame_stack import in_one_stack_chunk  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_CONFIG = REPO / "configs" / "examples" / "blr_csv.yaml"
#: Reference posteriors beside the project (CI has them there too); VIOPS_POSTERIORDB points elsewhere.
POSTERIORDB = Path(os.environ.get("VIOPS_POSTERIORDB", REPO / "benchmarks" / "posteriordb"))


#: Test modules that take minutes, longest first, from ``make test``'s ``--durations`` (seconds summed per module
#: on the 2-core machine). They start first, so that the suite does not end with one worker running a long module
#: while the others sit idle (pytest-xdist's own order, by number of tests, put the single long tests last).
LONG_MODULES = (
    "tests/viops/test_readme.py",  # ~175 s
    "tests/integration/test_distributed_profile.py",  # ~155 s
    "tests/integration/test_live_deployment.py",  # ~145 s
    "tests/dags/test_vi_monitoring.py",  # ~120 s
    "tests/dags/test_svi_retrain.py",  # ~120 s
    "tests/integration/test_monitor_scenarios_classifier.py",  # ~115 s
    "tests/faults/test_tracking_outage.py",  # ~100 s
    "tests/integration/test_lifecycle_server.py",  # ~95 s
    "tests/faults/test_signed_models.py",  # ~95 s
    "tests/faults/test_single_flight.py",  # ~80 s
    "tests/pipelines/training/test_ddp.py",  # ~70 s
    "tests/pipelines/lifecycle/test_retrain.py",  # ~70 s
    "tests/pipelines/diagnostics/test_conformance.py",  # ~65 s
    "tests/monitoring/test_checks.py",  # ~65 s
    "tests/integration/test_monitor_scenarios.py",  # ~60 s
    "tests/faults/test_kill_and_resume.py",  # ~55 s
    "tests/faults/test_secrets.py",  # ~45 s
    "tests/integration/test_decision_scenarios.py",  # ~40 s
)


# A test process holds every library the project uses: full collections as rarely as in a viops command
# (viops/process.py says why), and no rescans of that heap while the process shuts down.
gc.set_threshold(gc.get_threshold()[0], gc.get_threshold()[1], 100)


def pytest_unconfigure(config) -> None:
    gc.freeze()


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config):
    """Run what the hook's other implementations run, the whole session (collection and every test), in a chunk of
    CPython's frame stack of its own, as a viops command runs: at the edges of the 16-KiB chunks a test process
    otherwise maps and unmaps a chunk per call (388,000 times over tests/models, tests/monitoring and tests/dags;
    26,000 with this hook, most of them in the telemetry writers, which have since had a chunk of their own too).
    pipelines/frame_stack.py says why. Pytest calls this hook in the controller and in every worker."""
    rest = config.pluginmanager.subset_hook_caller("pytest_cmdline_main", remove_plugins=[sys.modules[__name__]])
    return in_one_stack_chunk(lambda: rest(config=config))


def pytest_collection_modifyitems(config, items) -> None:
    """Long modules first, in :data:`LONG_MODULES` order; the rest after them in collection order. The sort is
    stable, so the tests of a module keep their order (``make test`` passes ``--no-loadscope-reorder`` so that
    pytest-xdist keeps this one)."""
    rank = {module: i for i, module in enumerate(LONG_MODULES)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))


def require(condition: bool, reason: str) -> None:
    """Skip (locally) or fail (in CI) when a real component a test needs is not available."""
    if condition:
        return
    if os.environ.get("VIOPS_REQUIRE_INTEGRATION") == "1":
        pytest.fail(f"required component missing in CI: {reason}")
    pytest.skip(reason)


def ephemeral_ports_start() -> int:
    """The first port of the range the kernel picks from (``bind`` to port 0, the local end of a connection)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _port_slice() -> range | None:
    """The ports this test process hands out: its own slice of those below the kernel's ephemeral range. A port the
    kernel picks comes from that range, as did every port here before; a server told a port then binds it seconds
    later, and meanwhile another worker's pick, or any connection, could take it. None where the ephemeral range
    starts too low to leave room."""
    low = ephemeral_ports_start()
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    size = min(4096, (low - 10_000) // max(workers, 1))
    return range(low - size * (worker + 1), low - size * worker) if size >= 100 else None


_PORTS = _port_slice()
_handed_out: set[int] = set()
_next_port = itertools.count(secrets.randbelow(len(_PORTS)) if _PORTS else 0)  # two sessions at once: other ports


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port(consecutive: int = 1) -> int:
    """A port free on 127.0.0.1 now, with the ``consecutive - 1`` ports after it, none of them handed out before by
    this process; the test's server binds it later (:func:`_port_slice` says why a slice of our own)."""
    if _PORTS is None:
        for _ in range(50):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            if all(_bindable(p) for p in range(port + 1, port + consecutive)):
                return port
        raise RuntimeError(f"no {consecutive} consecutive free ports")
    for _ in range(len(_PORTS)):
        port = _PORTS.start + next(_next_port) % len(_PORTS)
        block = range(port, port + consecutive)
        if block.stop <= _PORTS.stop and _handed_out.isdisjoint(block) and all(map(_bindable, block)):
            _handed_out.update(block)
            return port
    raise RuntimeError(f"no {consecutive} consecutive free ports left in {_PORTS}")


_store_template: Path | None = None
#: The artifact root ``mlflow server --artifacts-destination`` gives the experiments of its store (proxied artifacts).
SERVER_ARTIFACT_ROOT = "mlflow-artifacts:/"


def mlflow_db(path: Path, artifact_root: str | None = None) -> str:
    """The tracking URI of a new, empty MLflow store at ``path`` (SQLite), for a test that needs one to set up.

    MLflow creates a store by running every schema migration on it: about a second of CPU per store, and the suite
    makes dozens. Here it does so once per test process, into a template, and each store is a copy of it. The one
    row that depends on where a store is made, the Default experiment's artifact location, is set as MLflow sets it:
    under ``artifact_root``, which is ``mlruns`` in the working folder for a client (the folder beside the store,
    where these tests work) and :data:`SERVER_ARTIFACT_ROOT` for a server's store. A store already at ``path`` is
    left as it is. Tests of how viops creates a store (the README's block, the default URI) start from none.
    """
    global _store_template
    if _store_template is None:
        from mlflow import MlflowClient

        folder = Path(tempfile.mkdtemp(prefix="viops-test-store-"))
        atexit.register(shutil.rmtree, folder, True)
        template = folder / "mlflow.db"
        uri = f"sqlite:///{template}"
        MlflowClient(tracking_uri=uri, registry_uri=uri).search_experiments()
        _store_template = template
    path = Path(path).resolve()
    if not path.exists():  # an existing store is opened as it is, as MLflow does
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_store_template, path)
        default = f"{artifact_root.rstrip('/')}/0" if artifact_root else str(path.parent / "mlruns" / "0")
        now = int(time.time() * 1000)
        with closing(sqlite3.connect(path)) as db, db:
            db.execute("UPDATE experiments SET artifact_location = ?, creation_time = ?, last_update_time = ? "
                       "WHERE experiment_id = 0", (default, now, now))
    return f"sqlite:///{path}"


@contextmanager
def pushgateway(log: Path):
    """A real Prometheus Pushgateway on a free port (Debian package ``prometheus-pushgateway``); yields its URL."""
    binary = shutil.which("prometheus-pushgateway") or shutil.which("pushgateway")
    require(binary is not None, "prometheus-pushgateway is not installed (Debian package 'prometheus-pushgateway')")
    url = f"http://127.0.0.1:{free_port()}"
    with open(log, "w") as out:
        # Debian's build persists to /var/lib/prometheus/pushgateway.data by default, which every gateway on the
        # machine would share (and load at start): keep this one's metrics in memory.
        proc = subprocess.Popen([binary, f"--web.listen-address={url.removeprefix('http://')}", "--persistence.file="],
                                stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    urllib.request.urlopen(f"{url}/-/ready", timeout=1).close()
                    break
                except OSError:
                    assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                    time.sleep(0.1)
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def make_regression_csv(path: Path, n: int = 4000, seed: int = 0, weights=(0.5, -1.0, 2.0), noise=0.3) -> Path:
    """Independent standard-normal features, y = x @ weights + 0.7 + noise * eps."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(weights)))
    y = x @ np.asarray(weights) + 0.7 + noise * rng.normal(size=n)
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(len(weights))])
    frame["y"] = y
    frame.to_csv(path, index=False)
    return path


@contextmanager
def mlflow_environment_kept():
    """mlflow.set_tracking_uri/set_registry_uri write MLFLOW_* into os.environ, where child processes of later tests
    would find them: put those variables back as they were on the way out."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}
    try:
        yield
    finally:
        for key in [k for k in os.environ if k.startswith("MLFLOW_") and k not in saved]:
            del os.environ[key]
        os.environ.update(saved)


@pytest.fixture(autouse=True)
def _restore_mlflow_environment():
    """The MLFLOW_* environment as it was before each test (:func:`mlflow_environment_kept`)."""
    with mlflow_environment_kept():
        yield


@pytest.fixture(autouse=True)
def _run_in_tmp_path(tmp_path: Path, monkeypatch) -> None:
    """Every test runs in its own folder: MLflow's default artifact root for a SQLite store is ./mlruns of the cwd."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def example_dir(tmp_path: Path) -> Path:
    """A copy of the example config, as written, next to a fresh data.csv."""
    (tmp_path / "blr_csv.yaml").write_text(EXAMPLE_CONFIG.read_text())
    make_regression_csv(tmp_path / "data.csv")
    return tmp_path


@pytest.fixture
def tracking_uri(tmp_path: Path, monkeypatch) -> str:
    uri = mlflow_db(tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri
