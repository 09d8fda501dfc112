"""Drift with real Evidently: shifted columns are found, and p-values and distances are told apart."""

from __future__ import annotations

import numpy as np
import pandas as pd

from monitoring.checks.drift import drift_check, statistic_kind


def _frames(n_ref: int, n_cur: int, shift: float = 0.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    ref = pd.DataFrame(rng.normal(size=(n_ref, 4)), columns=list("abcd"))
    cur = pd.DataFrame(rng.normal(size=(n_cur, 4)), columns=list("abcd"))
    cur["a"] += shift
    return ref, cur


def test_small_reference_uses_ks_p_values_and_flags_the_shifted_column():
    ref, cur = _frames(800, 500, shift=1.0)
    result = drift_check(ref, cur, list("abcd"))
    a = result.columns["a"]
    assert a.kind == "p_value" and a.method == "K-S p_value" and a.value < a.threshold and a.drifted
    assert result.drifted_count == sum(c.drifted for c in result.columns.values())
    assert result.share == result.drifted_count / 4 and result.dataset_drift == (result.share >= 0.5)
    for column in "bcd":  # a p-value above the threshold is no drift
        c = result.columns[column]
        assert c.drifted == (c.value < c.threshold)


def test_large_reference_uses_distances_where_large_means_drift():
    ref, cur = _frames(5000, 2000, shift=1.0)
    result = drift_check(ref, cur, list("abcd"))
    a = result.columns["a"]
    assert a.kind == "distance" and "Wasserstein" in a.method and a.value >= a.threshold and a.drifted
    assert not any(result.columns[c].drifted for c in "bcd")
    assert all(result.columns[c].value < result.columns[c].threshold for c in "bcd")


def test_dataset_drift_follows_the_share_and_rows_are_capped(tmp_path):
    ref, cur = _frames(3000, 3000, shift=0.0)
    cur[["a", "b", "c"]] += 1.0
    result = drift_check(ref, cur, list("abcd"), row_cap=1000, drift_share=0.5)
    assert result.rows == {"reference": 1000, "current": 1000}
    assert result.share == 0.75 and result.dataset_drift
    assert result.columns["a"].kind == "p_value"  # 1,000 reference rows after the cap: K-S
    html = result.save_html(tmp_path / "drift.html")
    assert html.stat().st_size > 10_000 and "<html" in html.read_text()[:2000].lower()


def test_statistic_kind():
    assert statistic_kind("chi-square p_value") == "p_value"
    assert statistic_kind("Jensen-Shannon distance") == "distance"
    assert statistic_kind("PSI") == "distance"


def test_a_chosen_distance_ignores_resampling_noise_that_a_test_flags():
    rng = np.random.default_rng(3)
    pool = pd.DataFrame(rng.normal(size=(150, 4)), columns=list("abcd"))  # a small held-out pool ...
    ref = pd.DataFrame(rng.normal(size=(300, 4)), columns=list("abcd"))
    cur = pool.sample(n=2000, replace=True, random_state=1)  # ... resampled into a large window
    chosen = drift_check(ref, cur, list("abcd"), method="wasserstein", threshold=0.3)
    assert all(c.kind == "distance" and c.threshold == 0.3 for c in chosen.columns.values())
    assert chosen.share == 0.0
    shifted = drift_check(ref, cur.assign(a=cur["a"] + 2.0), list("abcd"), method="wasserstein", threshold=0.3)
    assert shifted.columns["a"].drifted and shifted.drifted_count == 1


def _report_verdicts(snapshot) -> tuple[float, dict[str, tuple[str, float, float, bool]]]:
    """The share and per-column (method, value, threshold, drifted) as Evidently's Report gives them."""
    found = snapshot.dict()
    failed = {t["metric_config"]["metric_id"] for t in found["tests"]
              if t.get("id") == "drift" and t["status"] == "FAIL"}
    share, columns = None, {}
    for metric in found["metrics"]:
        config = metric["config"]
        if config["type"].endswith("DriftedColumnsCount"):
            share = float(metric["value"]["share"])
        elif config["type"].endswith("ValueDrift"):
            columns[config["column"]] = (config["method"], float(metric["value"]), float(config["threshold"]),
                                         metric["id"] in failed)
    return share, columns


def test_the_verdicts_are_those_of_evidently_s_report_on_the_same_rows():
    """The checks read Evidently's drift calculation without its widgets; its Report (drawn for the HTML) must give
    the same methods, values, thresholds and verdicts: K-S, Wasserstein and a chosen method, drifted and not."""
    cases = [(_frames(800, 500, shift=0.3), {}), (_frames(5000, 2000, shift=0.2), {}),
             (_frames(300, 400, shift=0.5), {"method": "wasserstein", "threshold": 0.3})]
    for (ref, cur), options in cases:
        ours = drift_check(ref, cur, list("abcd"), **options)
        share, columns = _report_verdicts(ours.snapshot())
        assert share == ours.share
        chosen = options.get("method")  # the Report names a chosen method as given, the calculation by its title
        assert columns == {name: (chosen or c.method, c.value, c.threshold, c.drifted)
                           for name, c in ours.columns.items()}
        assert any(c.drifted for c in ours.columns.values()) and not all(c.drifted for c in ours.columns.values())
