"""Prometheus export: names and labels, the text-file fallback, retries, and a real Pushgateway read back over HTTP."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from monitoring.checks.indicators import check_indicator
from monitoring.metrics import GAUGES, JOB, build_registry, export_metrics
from monitoring.slo import SLOConfig, evaluate_slos
from tests.conftest import free_port, pushgateway, require
from tests.monitoring.reports import make_report

REPORT = make_report(
    drift={"share": 0.2, "predictions": {"share": 1.0}},
    calibration={"coverage_90": 0.41, "delta": {"coverage_90": -0.49}},
    vi_health={"elbo_per_datum_delta": -2.0, "nll": 7.4, "latency_p95_ms": 3.5},
)
SLOS = SLOConfig.model_validate({"objectives": [
    {"name": "feature_drift", "indicator": "drift.share", "max": 0.1, "target": 0.95},
    {"name": "ece", "indicator": "calibration.ece", "max": 0.1, "target": 0.95},
]})
LABELS = {"model": "blr-diabetes", "alias": "champion", "version": "3"}


@pytest.mark.parametrize("name", sorted(GAUGES))
def test_every_gauge_reads_a_field_of_the_typed_report(name):
    check_indicator(GAUGES[name][0])  # raises, naming the path, when a result field was renamed


def _registry():
    return build_registry(REPORT, evaluate_slos(SLOS, REPORT), window_start=1.7e9, **LABELS)


def _samples(text: str) -> dict[str, tuple[dict, float]]:
    return {s.name: (s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples}


def test_textfile_has_conventional_names_and_only_model_alias_version_labels(tmp_path):
    result = export_metrics(_registry(), grouping_key={"model": "blr-diabetes", "alias": "champion"},
                            textfile=tmp_path / "viops.prom")
    assert not result.pushed and result.textfile == str(tmp_path / "viops.prom") and result.error is None
    samples = _samples((tmp_path / "viops.prom").read_text())
    assert samples["viops_feature_drift_share_ratio"] == (LABELS, 0.2)
    assert samples["viops_scoring_latency_p95_seconds"][1] == pytest.approx(0.0035)
    assert samples["viops_elbo_per_datum_delta_nats"][1] == -2.0
    assert samples["viops_slo_feature_drift_good"][1] == 0.0
    assert samples["viops_slo_feature_drift_burn_rate"][1] == pytest.approx(20.0)  # 1 bad of 1, budget 5%
    assert "viops_slo_ece_good" not in samples and "viops_calibration_ece_ratio" not in samples  # no data: absent
    assert all(name.startswith("viops_") and labels == LABELS for name, (labels, _) in samples.items())


def test_promtool_accepts_the_exposition(tmp_path):
    promtool = shutil.which("promtool")
    require(promtool is not None, "promtool is not installed (Debian package 'prometheus')")
    export_metrics(_registry(), grouping_key={}, textfile=tmp_path / "viops.prom")
    proc = subprocess.run([promtool, "check", "metrics"], input=(tmp_path / "viops.prom").read_text(),
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_failed_push_is_retried_then_written_to_the_textfile(tmp_path, caplog):
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    result = export_metrics(_registry(), grouping_key={"model": "m", "alias": "champion"}, pushgateway=dead,
                            textfile=tmp_path / "fallback.prom", retries=2, backoff_seconds=0.01, timeout=1)
    assert not result.pushed and result.attempts == 2 and "Connection refused" in result.error
    assert _samples((tmp_path / "fallback.prom").read_text())["viops_window_rows"][1] == 500
    assert len([r for r in caplog.records if "push to" in r.getMessage()]) == 2


@pytest.mark.integration
def test_push_to_a_real_pushgateway_and_read_it_back(tmp_path):
    with pushgateway(tmp_path / "pushgateway.log") as url:
        result = export_metrics(_registry(), grouping_key={"model": "blr-diabetes", "alias": "champion"},
                                pushgateway=url, textfile=tmp_path / "unused.prom")
        assert result.pushed and result.attempts == 1 and not (tmp_path / "unused.prom").exists()
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
            scraped = resp.read().decode()
    families = {f.name: f for f in text_string_to_metric_families(scraped)}
    (drift,) = families["viops_feature_drift_share_ratio"].samples
    assert drift.value == 0.2 and drift.labels["job"] == JOB and drift.labels["version"] == "3"
    (pushed,) = [s for s in families["push_time_seconds"].samples if s.labels.get("alias") == "champion"]
    assert abs(pushed.value - time.time()) < 60  # what the staleness alert watches
