"""Single flight: two promotions, or two monitors deciding the same retrain, at the same time do the work once.
The lease lives in the registry (pipelines/registry/lease.py), so this holds across hosts as well as processes."""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from pipelines.registry.lease import TOKEN_ENV, LeaseHeld, acquire, hold, lease_name
from tests.faults.conftest import finish, start, train_here


def _versions(uri: str, model: str) -> list[str]:
    return sorted(v.version for v in MlflowClient(uri, uri).search_model_versions(f"name='{model}'"))


def _champion(uri: str, model: str) -> str:
    return str(MlflowClient(uri, uri).get_model_version_by_alias(model, "champion").version)


def test_two_promotions_at_once_change_the_champion_once(example):
    root, uri = example
    env = {"MLFLOW_TRACKING_URI": uri}
    trained = train_here(root, uri, "train.seed=1")
    assert trained.model_version == "2", trained.registration
    audit = root / "audit.jsonl"
    started = time.monotonic()
    procs = [start(["promote", "--model", "blr-example", "--version", "2", "--audit-log", str(audit),
                    "--reason", f"drill {i}"], env=env, cwd=root) for i in range(2)]
    ran = [finish(p, started) for p in procs]
    assert [r.code for r in ran] == [0, 0], [r.stderr[-1500:] for r in ran]
    assert sorted(r.result["changed"] for r in ran) == [False, True]
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(r["action"], r["to_version"]) for r in records] == [("promote", "2")]
    assert _champion(uri, "blr-example") == "2"
    assert lease_name("blr-example") not in [m.name for m in MlflowClient(uri, uri).search_registered_models()]


def _shifted_window(path, rows: int = 600, seed: int = 7):
    """Rows of the example's relation with two inputs moved by 3 SDs: drift a retrain fixes (labels arrived)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 3)) + np.array([3.0, 0.0, 3.0])
    frame = pd.DataFrame(x, columns=["x0", "x1", "x2"])
    frame["y"] = x @ np.array([0.5, -1.0, 2.0]) + 0.7 + 0.3 * rng.normal(size=rows)
    frame.to_csv(path, index=False)
    return path


def test_two_monitors_that_decide_a_retrain_at_once_retrain_once(example):
    root, uri = example
    env = {"MLFLOW_TRACKING_URI": uri}
    window = _shifted_window(root / "shifted.csv")
    before = _versions(uri, "blr-example")
    started = time.monotonic()
    procs = [start(["monitor", "--model", "blr-example", "--window", str(window), "--execute", "--no-drift-report",
                    "--state-dir", str(root / f"state-{i}")], env=env, cwd=root) for i in range(2)]
    ran = [finish(p, started, timeout=600) for p in procs]
    # Both found no incident experiment and created it at once, once: the loser reads the winner's (a regression).
    errors = [[line for line in r.stderr.splitlines() if "Error" in line or "exited with code" in line] for r in ran]
    assert [r.code for r in ran] == [0, 0], errors
    decisions = [r.result["decision"]["action"] for r in ran]
    assert decisions == ["retrain", "retrain"], [r.result["decision"]["reason"] for r in ran]
    executed = [r.result["executed"] for r in ran]
    skipped = [e for e in executed if e.get("skipped")]
    assert len(skipped) == 1, executed
    assert "already in progress (retrain by" in skipped[0]["reason"]
    assert len(_versions(uri, "blr-example")) == len(before) + 1  # one retrain registered one version


@pytest.fixture
def client(tracking_uri):
    client = MlflowClient(tracking_uri, tracking_uri)
    client.create_registered_model("m")
    return client


def test_a_held_lease_refuses_a_second_holder_naming_the_first(client, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with hold(client, "m", "retrain", incident="abc123"):
        monkeypatch.delenv(TOKEN_ENV)  # the second asker is another process: it does not carry the token
        with pytest.raises(LeaseHeld, match=r"a promote of m cannot start: already in progress \(retrain by .* "
                                            r"since .*, incident abc123\)"):
            acquire(client, "m", "promote", wait=0.5)
    with hold(client, "m", "promote"):  # released: free again
        pass


def test_a_child_of_the_holder_shares_the_lease(client, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    import os

    with hold(client, "m", "retrain") as outer:
        assert os.environ[TOKEN_ENV] == outer.token  # what a child process inherits
        with hold(client, "m", "promote") as inner:
            assert not inner.owned and inner.token == outer.token
        assert client.get_registered_model(lease_name("m"))  # the inner block did not release it
    assert TOKEN_ENV not in os.environ


def test_the_lease_of_a_dead_holder_is_taken_over_once_expired(client, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    monkeypatch.setenv("VIOPS_LEASE_TTL_SECONDS", "1")
    dead = acquire(client, "m", "retrain")  # never released, never renewed: its process "died"
    with pytest.raises(LeaseHeld):
        acquire(client, "m", "promote")
    time.sleep(1.2)
    taken = acquire(client, "m", "promote")
    assert taken.owned and taken.token != dead.token


def test_a_lease_released_while_another_asker_is_refused_goes_to_that_asker(client, monkeypatch):
    """MLflow's SQL store refuses a second creation by reading the existing lease back to word the refusal; when the
    holder releases it in between, that read says "not found". The asker tries again and gets the lease."""
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    holder = acquire(client, "m", "retrain")
    store = client._get_registry_client().store
    read_back = store.get_registered_model
    released = []

    def holder_releases_first(name):  # the holder finishes between the refused insert and the read-back
        if name == lease_name("m") and not released:
            released.append(holder.token)
            client.delete_registered_model(name)
        return read_back(name)

    monkeypatch.setattr(store, "get_registered_model", holder_releases_first)
    taken = acquire(client, "m", "promote")
    assert released == [holder.token] and taken.owned and taken.token != holder.token
    assert client.get_registered_model(lease_name("m")).tags["viops.lease.operation"] == "promote"
