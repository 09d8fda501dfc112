"""What the lifecycle commands push for the dashboards reaches a real Pushgateway, one group per model (and action),
each push replacing the previous one; without a gateway nothing is pushed and the result says why."""

import urllib.request

from monitoring.events import export_registry_change, export_training, push_change, push_verdict
from tests.conftest import pushgateway


def _scrape(url: str) -> str:
    return urllib.request.urlopen(f"{url}/metrics", timeout=5).read().decode()


def test_training_gate_and_registry_events_reach_the_pushgateway(tmp_path):
    metrics = {"final/validation_elbo_per_datum": -1.2, "grad_norm/total": 0.04, "kl": 33.0, "final/steps": 1500.0}
    with pushgateway(tmp_path / "pushgateway.log") as gateway:
        assert export_training("m", "0123456789abcdef", metrics, gateway).pushed
        assert export_training("m", "fedcba9876543210", {**metrics, "kl": 30.0}, gateway).pushed
        # Verdicts and changes as `viops evaluate` / `promote` and the retrain's steps report them.
        verdict = {"model": "m", "candidate_version": "2", "champion_version": "1", "passed": True,
                   "metrics": {"candidate": {"nll": 1.25}, "champion": {"nll": 2.0}}}
        assert push_verdict(verdict, gateway)
        assert not push_verdict({**verdict, "already_champion": True, "passed": False}, gateway)  # nothing evaluated
        change = {"model_name": "m", "action": "promote", "to_version": "2", "from_version": "1", "changed": True}
        assert push_change(change, gateway)
        assert not push_change({**change, "action": "rollback", "changed": False}, gateway)  # nothing moved
        assert export_registry_change("m", "rollback", "1", "2", gateway).pushed
        scraped = _scrape(gateway)
    assert 'viops_training_kl_nats{instance="",job="viops_training",model="m",run="fedcba98"} 30' in scraped
    assert 'run="01234567"' not in scraped  # the model's previous training was replaced
    gate = 'candidate="2",champion="1",instance="",job="viops_gate",model="m"'
    assert f"viops_gate_passed{{{gate}}} 1" in scraped and f"viops_gate_nll_delta_nats{{{gate}}} -0.75" in scraped
    changes = [line for line in scraped.splitlines() if line.startswith("viops_registry_change_timestamp_seconds{")]
    assert len(changes) == 2 and sum('action="promote"' in c for c in changes) == 1


def test_without_a_pushgateway_nothing_is_pushed():
    result = export_registry_change("m", "promote", "2", "1", None)
    assert not result.pushed and "VIOPS_PUSHGATEWAY" in result.error
