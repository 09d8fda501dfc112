"""``viops simulate``: every scenario config writes its windows, and each scenario changes what it says it changes."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from monitoring.scenarios import load_scenario, simulate
from monitoring.windows import WindowStore
from pipelines.config.base import ConfigError
from pipelines.training.data import prepare
from tests.conftest import REPO
from viops.cli import main

SCENARIOS = REPO / "configs" / "scenarios"


def _windows(name: str, out, **changes) -> tuple[WindowStore, list[pd.DataFrame], object]:
    scenario, training = load_scenario(SCENARIOS / f"{name}.yaml")
    scenario = scenario.model_copy(update=changes)
    store = simulate(scenario, training, out)
    return store, [store.read(w) for w in store.windows()], scenario


@pytest.mark.parametrize("path", sorted(SCENARIOS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_scenario_config_simulates(path, tmp_path, capsys):
    assert main(["simulate", "--config", str(path), "--out", str(tmp_path / "w"), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    scenario, _ = load_scenario(path)
    assert len(payload["windows"]) == scenario.windows
    # One Parquet partition per window: the whole store reads as one table with a `window` column.
    table = pd.read_parquet(tmp_path / "w")
    bursts = {"low_volume": round(scenario.fraction * scenario.rows_per_window), "empty": 0}
    thin = scenario.duration if scenario.scenario in bursts else 0
    expected = (scenario.windows - thin) * scenario.rows_per_window + thin * bursts.get(scenario.scenario, 0)
    assert len(table) == expected
    assert table["window"].nunique() == scenario.windows - (thin if scenario.scenario == "empty" else 0)


def test_gradual_label_noise_and_volume_scenarios_change_what_they_say(tmp_path):
    _, stable, _ = _windows("diabetes_stable", tmp_path / "s", windows=10)
    _, gradual, scenario = _windows("diabetes_gradual", tmp_path / "g", windows=10)
    _, training = load_scenario(SCENARIOS / "diabetes_gradual.yaml")
    sd = prepare(training.data).train["bmi"].std(ddof=0)
    shifts = [(g["bmi"] - s["bmi"]).mean() / sd for g, s in zip(gradual, stable)]
    assert np.allclose(shifts[:6], 0.0) and np.allclose(shifts[6:], [0.1, 0.2, 0.3, 0.4])  # 0.1 SD more a window
    _, noisy, _ = _windows("diabetes_label_noise", tmp_path / "n", windows=8)
    added = [(n["target"] - s["target"]).std() for n, s in zip(noisy, stable)]
    assert added[:6] == [0.0] * 6 and all(a > 40 for a in added[6:])  # residual SD ~54 doubled: sqrt(3) * 54 added
    _, empty, _ = _windows("diabetes_empty", tmp_path / "e")
    _, low, _ = _windows("diabetes_low_volume", tmp_path / "l")
    assert [len(f) for f in empty] == [500] * 6 + [0] * 4 + [500] * 2
    assert [len(f) for f in low] == [500] * 6 + [25] * 3 + [500] * 3
    assert list(empty[6].columns) == list(stable[0].columns)  # an empty window keeps its schema


def test_stable_windows_match_the_held_out_rows(tmp_path):
    _, frames, scenario = _windows("diabetes_stable", tmp_path)
    _, training = load_scenario(SCENARIOS / "diabetes_stable.yaml")
    data = prepare(training.data)
    pool = pd.concat([data.validation, data.test])
    for frame in frames:
        assert list(frame.columns) == [*data.features, data.target] and np.isfinite(frame.to_numpy()).all()
        # drawn from rows the model never trained on
        assert frame["bmi"].isin(pool["bmi"]).all()


def test_covariate_shift_moves_the_chosen_features_from_window_k(tmp_path):
    _, frames, scenario = _windows("diabetes_covariate_shift", tmp_path)
    _, training = load_scenario(SCENARIOS / "diabetes_covariate_shift.yaml")
    train = prepare(training.data).train
    for index, frame in enumerate(frames):
        for feature in ("bmi", "s5"):
            shift = (frame[feature].mean() - train[feature].mean()) / train[feature].std(ddof=0)
            assert (shift > 1.5) == (index >= scenario.start), (index, feature, shift)
        assert abs(frame["age"].mean() - train["age"].mean()) < 0.5 * train["age"].std()  # untouched


def test_concept_shift_changes_the_label_relation_only(tmp_path):
    _, frames, scenario = _windows("diabetes_concept_shift", tmp_path)
    slopes = [np.polyfit(f["bmi"], f["target"], 1)[0] for f in frames]
    before, after = np.mean(slopes[: scenario.start]), np.mean(slopes[scenario.start:])
    assert after > before * 1.5
    _, frames, scenario = _windows("breast_cancer_concept_shift", tmp_path / "bc")
    _, clean, _ = _windows("breast_cancer_concept_shift", tmp_path / "bc0", scenario="stable")
    flipped = [(f["target"] != c["target"]).mean() for f, c in zip(frames, clean)]
    assert all(x == 0 for x in flipped[: scenario.start])
    assert all(0.2 < x < 0.4 for x in flipped[scenario.start:])  # fraction 0.3 of labels reassigned


def test_nan_burst_hits_only_its_windows_and_features(tmp_path):
    store, frames, scenario = _windows("diabetes_nan_burst", tmp_path)
    for index, frame in enumerate(frames):
        bad = ~np.isfinite(frame.drop(columns=["target"]).to_numpy())
        hit = scenario.start <= index < scenario.start + scenario.duration
        assert bad.any() == hit and store.meta(store.windows()[index])["affected"] == hit
        if hit:
            bad_columns = set(frame.columns[:-1][bad.any(0)])
            assert bad_columns == {"bmi", "bp"} and 0.1 < bad.mean(0).max() < 0.3


@pytest.mark.parametrize("text, message", [
    ("name: x\ntraining_config: ../demo/blr_diabetes.yaml\nscenario: drift\n", "scenario: Input should be"),
    ("name: x\ntraining_config: ../demo/blr_diabetes.yaml\nscenario: covariate_shift\nstart: 12\n",
     "start (12) must be a window index below windows (12)"),
    ("name: x\ntraining_config: ../demo/blr_diabetes.yaml\nscenario: covariate_shift\nfeatures: [height]\n",
     "feature(s) ['height'] are not in the data"),
])
def test_bad_scenarios_are_clear_errors(text, message, tmp_path):
    path = SCENARIOS / "_test_bad.yaml"  # beside the real ones, so the relative training_config resolves
    try:
        path.write_text(text)
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                           .replace("]", r"\]")):
            scenario, training = load_scenario(path)
            simulate(scenario, training, tmp_path / "w")
    finally:
        path.unlink()
    assert not (tmp_path / "w").exists()


def test_monitoring_config_is_the_documented_defaults_and_refuses_unknown_keys(tmp_path):
    from monitoring.checks.config import ChecksConfig, load_checks_config

    assert load_checks_config(REPO / "configs" / "monitoring.yaml") == ChecksConfig()
    (tmp_path / "m.yaml").write_text("checks:\n  drift:\n    treshold: 0.3\n")
    with pytest.raises(ConfigError, match=r"checks\.drift\.treshold"):
        load_checks_config(tmp_path / "m.yaml")
