"""The window checks against a real champion (trained, registered and loaded back from MLflow), on simulated windows
of every scenario: each check moves on the scenario it is meant to catch and stays quiet on the others."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from monitoring.checks.champion import load_champion
from monitoring.checks.config import ChecksConfig
from monitoring.monitor import check_window
from monitoring.scenarios import load_scenario, simulate
from monitoring.windows import Window
from pipelines.config.loading import load_config, parse_overrides
from pipelines.lifecycle.train import train
from pipelines.tables import DataError
from tests.conftest import REPO, mlflow_db

SCENARIOS = REPO / "configs" / "scenarios"


def champion_tracking_uri(champion) -> str:
    return champion.tracking_uri


@pytest.fixture(scope="module")
def regression(tmp_path_factory):
    root = tmp_path_factory.mktemp("checks")
    uri = mlflow_db(root / "mlflow.db")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        train(load_config(REPO / "configs" / "demo" / "blr_diabetes.yaml"), tracking_uri=uri)
    champion = load_champion(MlflowClient(uri, uri), "blr-diabetes", tracking_uri=uri)
    champion.tracking_uri = uri
    windows = {}
    for name in ("stable", "covariate_shift", "concept_shift", "nan_burst"):
        scenario, training = load_scenario(SCENARIOS / f"diabetes_{name}.yaml")
        store = simulate(scenario.model_copy(update={"windows": 8}), training, root / name)
        windows[name] = [store.read(w) for w in store.windows()]
    return champion, windows


def _typed_report(frame, champion):
    return check_window(Window("test", Path("window.parquet").resolve(), frame), champion, ChecksConfig())


def _report(frame, champion):
    return _typed_report(frame, champion).to_json()


def test_baselines_come_from_the_champions_held_out_split(regression):
    champion, _ = regression
    assert champion.kind == "regression" and champion.features[:3] == ["age", "sex", "bmi"]
    assert 0.8 <= champion.baseline["coverage_90"] <= 0.97 and "elbo_per_datum" in champion.baseline
    assert champion.baseline_uncertainty["mean_predictive_sd"] > 0


def test_the_feature_weights_are_kept_in_the_state_folder_and_measured_afresh_for_other_settings(
        regression, tmp_path, monkeypatch):
    import monitoring.checks.champion as module

    champion, _ = regression
    client = MlflowClient(champion.tracking_uri, champion.tracking_uri)

    def load(**options):
        return load_champion(client, "blr-diabetes", tracking_uri=champion.tracking_uri, state_dir=tmp_path, **options)

    first = load()
    assert first.feature_weights == champion.feature_weights  # the same measurement as without a state folder
    version = first.loaded.version
    assert sorted(p.name for p in tmp_path.glob("*.json")) == [f"blr-diabetes-v{version}.baseline.json",
                                                                f"blr-diabetes-v{version}.sensitivity.json"]

    def measure(*args, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr(module, "feature_weights", measure)
    assert load().feature_weights == first.feature_weights  # read back, not measured
    with pytest.raises(AssertionError, match="measured again"):
        load(checks=ChecksConfig(seed=1))  # other settings: measured afresh
    for unreadable in ("{not json", "[]", '{"key": null}'):
        (tmp_path / f"blr-diabetes-v{first.loaded.version}.sensitivity.json").write_text(unreadable)
        with pytest.raises(AssertionError, match="measured again"):
            load()  # measured again, not trusted


def test_the_baselines_are_kept_in_the_state_folder_and_the_holdout_is_not_read_again(regression, tmp_path,
                                                                                        monkeypatch):
    from pipelines.run_artifacts import RunArtifacts

    champion, _ = regression
    client = MlflowClient(champion.tracking_uri, champion.tracking_uri)

    def load(**options):
        return load_champion(client, "blr-diabetes", tracking_uri=champion.tracking_uri, state_dir=tmp_path, **options)

    first = load()
    # The same measurements as without a state folder.
    assert first.baseline == champion.baseline and first.baseline_uncertainty == champion.baseline_uncertainty
    pd.testing.assert_frame_equal(first.reference_predictions, champion.reference_predictions)
    kept = tmp_path / f"blr-diabetes-v{first.loaded.version}.baseline.json"
    assert kept.is_file()

    def read_holdout(self):
        raise AssertionError("held-out split read again")

    monkeypatch.setattr(RunArtifacts, "holdout", read_holdout)
    again = load()  # read back: no held-out split, and the same values
    assert again.baseline == first.baseline and again.baseline_uncertainty == first.baseline_uncertainty
    pd.testing.assert_frame_equal(again.reference_predictions, first.reference_predictions)
    with pytest.raises(AssertionError, match="read again"):
        load(checks=ChecksConfig(seed=1))  # another seed: measured afresh
    for unreadable in ("{not json", '{"key": null}', kept.read_text().replace('"reference_predictions"', '"x"')):
        kept.write_text(unreadable)
        with pytest.raises(AssertionError, match="read again"):
            load()  # measured again, not trusted


def test_stable_window_is_quiet(regression):
    champion, windows = regression
    report = _report(windows["stable"][6], champion)
    assert report["drift"]["share"] == 0.0 and report["drift"]["predictions"]["share"] == 0.0
    assert all(c["kind"] == "distance" for c in report["drift"]["columns"].values())
    assert abs(report["calibration"]["delta"]["coverage_90"]) < 0.08
    assert abs(report["vi_health"]["elbo_per_datum_delta"]) < 0.3
    assert report["vi_health"]["uncertainty"]["mean_predictive_sd"]["ratio"] == pytest.approx(1.0, abs=0.1)
    assert report["scoring"]["scored_now"] == 500 and report["inputs"]["nonfinite_values"] == 0


def test_covariate_shift_shows_as_drift_of_the_shifted_features_and_predictions(regression):
    champion, windows = regression
    before, after = (_report(windows["covariate_shift"][i], champion) for i in (5, 6))
    assert before["drift"]["share"] == 0.0
    drifted = {c for c, r in after["drift"]["columns"].items() if r["drifted"]}
    assert drifted == {"bmi", "s5"} and after["drift"]["share"] == pytest.approx(0.2)
    assert after["drift"]["predictions"]["columns"]["mean"]["drifted"]
    assert after["calibration"]["delta"]["coverage_90"] < -0.3 and after["vi_health"]["elbo_per_datum_delta"] < -1


def test_concept_shift_shows_in_calibration_and_elbo_but_not_in_drift(regression):
    champion, windows = regression
    report = _report(windows["concept_shift"][7], champion)
    assert report["drift"]["share"] == 0.0 and report["drift"]["predictions"]["share"] == 0.0
    assert report["calibration"]["delta"]["coverage_90"] < -0.1
    assert report["vi_health"]["elbo_per_datum_delta"] < -0.3


def test_nan_burst_is_counted_and_only_finite_rows_are_used(regression):
    champion, windows = regression
    frame = windows["nan_burst"][6]
    report = _report(frame, champion)
    inputs = report["inputs"]
    assert set(inputs["nonfinite_by_column"]) == {"bmi", "bp"} and 0.25 < inputs["nonfinite_fraction"] < 0.5
    assert inputs["finite_rows"] == report["scoring"]["scored_now"] == inputs["labelled_rows"] < 500
    assert report["drift"]["rows"]["current"] == inputs["finite_rows"]
    assert report["vi_health"]["nonfinite_fraction"] == inputs["nonfinite_fraction"]


def test_unlabelled_and_prescored_windows(regression):
    champion, windows = regression
    frame = windows["stable"][2]
    unlabelled = _report(frame.drop(columns=["target"]), champion)
    assert unlabelled["calibration"] is None and "elbo_per_datum" not in unlabelled["vi_health"]
    assert "uncertainty" in unlabelled["vi_health"] and unlabelled["inputs"]["labelled_rows"] == 0
    scored = champion.loaded.pyfunc.predict(frame[champion.features])
    prescored = _report(pd.concat([frame, scored.reset_index(drop=True)], axis=1), champion)
    assert prescored["scoring"]["scored_now"] == 0
    with pytest.raises(DataError, match=r"window lacks feature column\(s\) \['bmi'\]"):
        _report(frame.drop(columns=["bmi"]), champion)


def test_classifier_concept_shift_raises_ece_and_brier(tmp_path):
    uri = mlflow_db(tmp_path / "mlflow.db")
    config = load_config(REPO / "configs" / "zoo" / "logistic_breast_cancer.yaml",
                         parse_overrides(["train.max_epochs=60"]))
    train(config, tracking_uri=uri)
    # A short fit: its k-hat keeps it out of `champion` (the gate), so the checks watch it as `challenger`.
    champion = load_champion(MlflowClient(uri, uri), config.model_name, tracking_uri=uri, alias="challenger")
    assert champion.kind == "classification"
    scenario, training = load_scenario(SCENARIOS / "breast_cancer_concept_shift.yaml")
    store = simulate(scenario.model_copy(update={"windows": 8}), training, tmp_path / "w")
    before, after = (_report(store.read(store.windows()[i]), champion) for i in (5, 6))
    assert before["calibration"]["ece"] < 0.1 and before["drift"]["share"] == 0.0
    assert after["calibration"]["delta"]["brier"] > 0.3 and after["calibration"]["ece"] > 0.2
    assert after["calibration"]["accuracy"] < before["calibration"]["accuracy"] - 0.2
    uncertainty = after["vi_health"]["uncertainty"]
    assert set(uncertainty) == {"mean_entropy", "mean_mutual_information"}


def test_slos_breach_on_exactly_the_scenario_they_watch(regression):
    from monitoring.slo import evaluate_slos, load_slos

    champion, windows = regression
    slos = load_slos(REPO / "configs" / "slo.yaml")

    def breaches(frame) -> set[str]:
        return {s.name for s in evaluate_slos(slos, _typed_report(frame, champion)) if s.status == "breach"}

    assert [breaches(frame) for frame in windows["stable"]] == [set()] * 8
    # A 2-SD jump of two key features is also enough evidence for the slow-drift CUSUM at once.
    assert breaches(windows["covariate_shift"][6]) == {"feature_drift", "slow_drift", "prediction_drift",
                                                       "coverage_90", "coverage_regression", "elbo_regression"}
    assert breaches(windows["concept_shift"][6]) == {"coverage_90", "coverage_regression", "elbo_regression"}
    assert breaches(windows["nan_burst"][6]) == {"input_validity"}


def test_monitor_writes_predictions_back_into_the_window_store(regression, tmp_path, capsys):
    import json

    from monitoring.windows import WindowStore
    from viops.cli import main

    champion, _ = regression
    scenario, training = load_scenario(SCENARIOS / "diabetes_nan_burst.yaml")
    store = simulate(scenario.model_copy(update={"windows": 7}), training, tmp_path / "w")
    window = store.windows()[6]
    tracking = champion_tracking_uri(champion)
    args = ["monitor", "--model", "blr-diabetes", "--window", str(store.path(window)), "--json", "--tracking-uri",
            tracking, "--no-drift-report"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert first["scoring"]["scored_now"] == first["inputs"]["finite_rows"] and first["scoring"]["written_back"]
    stored = WindowStore(tmp_path / "w").read(window)
    assert {"mean", "sd", "q05", "q95"} <= set(stored.columns)
    assert stored["mean"].notna().sum() == first["inputs"]["finite_rows"]  # NaN-feature rows have no prediction
    assert WindowStore(tmp_path / "w").meta(window)["scored_by"] == "blr-diabetes/1"
    assert main(args) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["scoring"]["scored_now"] == 0 and not again["scoring"]["written_back"]
    assert again["decision"] == first["decision"] and again["incident_id"] == first["incident_id"]
    # Predictions another version stored (the champion changed since) are not taken for this one's: scored again.
    WindowStore(tmp_path / "w").write(window, stored, meta={**WindowStore(tmp_path / "w").meta(window),
                                                            "scored_by": "blr-diabetes/7"})
    assert main(args) == 0
    other = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert other["scoring"]["scored_now"] == first["inputs"]["finite_rows"] and other["scoring"]["version"] == "1"
    assert WindowStore(tmp_path / "w").meta(window)["scored_by"] == "blr-diabetes/1"


def test_execute_retrain_trains_on_the_data_plus_the_window_and_gates_it(regression, tmp_path, capsys, monkeypatch):
    import json

    from mlflow import MlflowClient

    from viops.cli import main

    champion, _ = regression
    uri = champion_tracking_uri(champion)
    monkeypatch.setenv("VIOPS_AUDIT_LOG", str(tmp_path / "audit.jsonl"))
    scenario, training = load_scenario(SCENARIOS / "diabetes_concept_shift.yaml")
    store = simulate(scenario.model_copy(update={"windows": 7}), training, tmp_path / "w")
    state = ["--state-dir", str(tmp_path / "state"), "--tracking-uri", uri, "--no-drift-report"]
    for window in store.windows()[:6]:
        assert main(["monitor", "--model", "blr-diabetes", "--window", str(store.path(window)), *state]) == 0
    capsys.readouterr()
    last = store.path(store.windows()[6])
    assert main(["monitor", "--model", "blr-diabetes", "--window", str(last), "--json", "--execute", *state]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["decision"]["action"] == "retrain", result["decision"]
    executed = result["executed"]
    assert executed["added_rows"] == 500 and executed["rows"] == 442 + 500
    client = MlflowClient(uri, uri)
    run = client.get_run(executed["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["viops.trigger_reason"].startswith("ViopsCalibrationBreach")
    # Trained on the concept-shifted rows too, it beats the champion on its held-out split: the gate passes it. The
    # demo config deploys such a version in shadow (deploy.strategy), with the decision as its reason: it is the
    # challenger, and the next windows judge it live before it may become champion.
    version = client.get_model_version("blr-diabetes", executed["version"])
    assert executed["verdict"]["passed"] and not executed["promoted"], executed["verdict"]
    assert executed["deployment"]["stage"] == "shadow" and version.tags["viops.gate.passed"] == "true"
    assert str(client.get_model_version_by_alias("blr-diabetes", "challenger").version) == executed["version"]
    assert str(client.get_model_version_by_alias("blr-diabetes", "champion").version) != executed["version"]
    assert version.tags["viops.deploy.reason"] == run.data.tags["viops.trigger_reason"]


def test_a_window_larger_than_memory_is_checked_scored_and_written_back_in_chunks(regression, tmp_path):
    from datetime import datetime, timezone

    from monitoring.monitor import run_monitor
    from monitoring.windows import WindowStore

    champion, windows = regression
    uri = champion_tracking_uri(champion)
    frame = pd.concat([*windows["stable"][:7], windows["nan_burst"][6]], ignore_index=True)  # 4,000 rows, NaNs last
    shifted = pd.concat(windows["covariate_shift"][6:8] * 3, ignore_index=True)
    store, when = WindowStore(tmp_path / "w"), datetime(2026, 3, 1, tzinfo=timezone.utc)
    path = store.write(when, frame, meta={"source": "test"})
    chunked = ChecksConfig(max_rows_in_memory=1_000, chunk_rows=700, row_cap=1_500)
    body = run_monitor(MlflowClient(uri, uri), model="blr-diabetes", window_path=path, tracking_uri=uri,
                       checks=chunked, state_dir=tmp_path / "state", drift_report=False)
    whole = _typed_report(frame, champion).to_json()
    for key in ("rows", "finite_rows", "nonfinite_values", "nonfinite_by_column", "labelled_rows"):
        assert body["inputs"][key] == whole["inputs"][key], key
    assert body["scoring"]["chunks"] == 6 and body["scoring"]["scored_now"] == whole["inputs"]["finite_rows"]
    assert body["scoring"]["written_back"] and body["deploy"] is None
    assert 1_200 < body["scoring"]["sampled_rows"] < 1_800 and body["drift"]["rows"]["current"] <= 1_500
    assert body["drift"]["share"] == 0.0 == whole["drift"]["share"]
    assert abs(body["calibration"]["delta"]["coverage_90"] - whole["calibration"]["delta"]["coverage_90"]) < 0.05
    stored = store.read(when)
    assert stored["mean"].notna().sum() == whole["inputs"]["finite_rows"] and len(stored) == len(frame)
    assert store.meta(when) == {"window": "2026-03-01T00:00:00Z", "source": "test", "scored_by": "blr-diabetes/1"}
    again = run_monitor(MlflowClient(uri, uri), model="blr-diabetes", window_path=path, tracking_uri=uri,
                        checks=chunked, state_dir=tmp_path / "state", drift_report=False)
    assert again["scoring"]["scored_now"] == 0 and not again["scoring"]["written_back"]
    # a shifted large window shows the same drift as in memory: the sample is as telling as the whole
    path = store.write(when, shifted)
    large = run_monitor(MlflowClient(uri, uri), model="blr-diabetes", window_path=path, tracking_uri=uri,
                        checks=chunked, state_dir=tmp_path / "state2", drift_report=False)
    assert {c for c, r in large["drift"]["columns"].items() if r["drifted"]} == {"bmi", "s5"}
    with pytest.raises(DataError, match=r"window lacks feature column\(s\) \['bmi'\]"):
        run_monitor(MlflowClient(uri, uri), model="blr-diabetes", window_path=store.write(when, shifted.drop(
            columns=["bmi"])), tracking_uri=uri, checks=chunked, state_dir=tmp_path / "state3")
    assert "mean" not in store.read(when).columns  # nothing written on bad input


def test_the_model_files_are_kept_in_the_state_folder_without_a_verification_key(regression, tmp_path, monkeypatch):
    import pipelines.registry.signing as signing
    from monitoring.checks.champion import MODEL_CACHE

    champion, _ = regression
    client = MlflowClient(champion.tracking_uri, champion.tracking_uri)
    monkeypatch.delenv("VIOPS_VERIFY_KEY", raising=False)

    def load():
        return load_champion(client, "blr-diabetes", tracking_uri=champion.tracking_uri, state_dir=tmp_path)

    first = load()
    (kept,) = (tmp_path / MODEL_CACHE).iterdir()
    assert kept.name == f"blr-diabetes-v{first.loaded.version}-{first.loaded.run_id}" and (kept / "MLmodel").is_file()
    (kept / "MLmodel").write_text("flavors: [not a model\n")  # a damaged copy ...
    with pytest.raises(Exception):
        load()
    assert not kept.exists()  # ... is dropped, and downloaded afresh by the next run
    load()
    assert (kept / "MLmodel").is_file()

    def download(*args, **kwargs):
        raise AssertionError("downloaded again")

    monkeypatch.setattr(signing, "download_model", download)
    again = load()  # from the kept files
    pd.testing.assert_frame_equal(again.loaded.pyfunc.predict(champion.reference.head(5)),
                                  champion.loaded.pyfunc.predict(champion.reference.head(5)))
    del again
    assert kept.is_dir()  # still there once the loaded model is gone


def test_a_model_cache_keeps_three_versions_of_a_model_and_replaces_a_partial_one(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import pipelines.registry.signing as signing
    from pipelines.serving.loading import cached_model

    downloads = []

    def download(client, name, version, dst, tracking_uri):
        downloads.append(version)
        folder = Path(dst) / "model"
        folder.mkdir()
        (folder / "MLmodel").write_text(f"version {version}\n")
        return folder

    monkeypatch.setattr(signing, "download_model", download)
    cache = tmp_path / "models"
    other = cached_model(None, SimpleNamespace(name="blr-vae", version="1", run_id="r9"), cache, "uri")
    paths = [cached_model(None, SimpleNamespace(name="blr", version=str(v), run_id=f"r{v}"), cache, "uri")
             for v in range(1, 5)]
    assert [p.name for p in paths] == ["blr-v1-r1", "blr-v2-r2", "blr-v3-r3", "blr-v4-r4"]
    assert sorted(p.name for p in cache.iterdir()) == ["blr-v2-r2", "blr-v3-r3", "blr-v4-r4", "blr-vae-v1-r9"]
    assert other.is_dir() and downloads == ["1", "1", "2", "3", "4"]
    again = cached_model(None, SimpleNamespace(name="blr", version="3", run_id="r3"), cache, "uri")
    assert again == paths[2] and len(downloads) == 5  # kept: not downloaded again
    (paths[3] / "MLmodel").unlink()  # a folder left without its MLmodel: downloaded again
    assert (cached_model(None, SimpleNamespace(name="blr", version="4", run_id="r4"), cache, "uri") / "MLmodel"
            ).read_text() == "version 4\n"
    assert not list(cache.glob(".download-*"))
