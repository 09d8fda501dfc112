"""The ports tests hand to the servers they start: never the same twice, never one the kernel could give away."""

from __future__ import annotations

from tests import conftest
from tests.conftest import free_port


def test_each_worker_has_its_own_slice_below_the_ephemeral_range(monkeypatch):
    low = conftest.ephemeral_ports_start()
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "3")
    slices = []
    for worker in range(3):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", f"gw{worker}")
        slices.append(set(conftest._port_slice()))
    assert all(len(s) >= 1000 and max(s) < low and min(s) > 1024 for s in slices)
    assert not (slices[0] & slices[1] or slices[0] & slices[2] or slices[1] & slices[2])


def test_a_port_is_handed_out_once_and_consecutive_ports_come_together():
    pairs = [free_port(consecutive=2) for _ in range(20)]
    singles = [free_port() for _ in range(200)]
    taken = [p for first in pairs for p in (first, first + 1)] + singles
    assert len(set(taken)) == len(taken)
    assert all(port in conftest._PORTS for port in taken)
