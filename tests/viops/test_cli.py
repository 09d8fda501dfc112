"""``viops train`` end to end on SQLite: JSON output, and bad inputs that fail clearly and register nothing."""

import contextlib
import io
import json

import pytest
from mlflow import MlflowClient

from tests.conftest import EXAMPLE_CONFIG, make_regression_csv, mlflow_db
from viops.cli import main

QUICK = ["--set", "train.max_epochs=3"]


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A tracking DB holding version 1 of blr-example as champion (trained here through ``viops train --json``), a
    directory with good data, and that command's exit code, JSON result and stderr. Every test of the module starts
    from this state, in any order."""
    root = tmp_path_factory.mktemp("cli")
    (root / "blr_csv.yaml").write_text(EXAMPLE_CONFIG.read_text())
    make_regression_csv(root / "data.csv", n=600)
    uri = mlflow_db(root / "mlflow.db")
    # Long enough to converge: the first version becomes champion only if it passes the gate's absolute thresholds.
    converged = ["--set", "train.max_epochs=60", "--set", "train.batch_size=32"]
    out, err = io.StringIO(), io.StringIO()
    # In its own folder: a SQLite store keeps artifacts in ./mlruns of the working directory.
    with contextlib.chdir(root), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["train", "--config", str(root / "blr_csv.yaml"), "--tracking-uri", uri, "--json", *converged])
    return root, uri, (code, out.getvalue(), err.getvalue())


def run_cli(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def versions(uri):
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    found = client.search_model_versions("name='blr-example'")
    champion = str(client.get_model_version_by_alias("blr-example", "champion").version) if found else None
    return sorted(int(v.version) for v in found), champion


def test_train_prints_json_last_and_registers_champion(registry):
    _, uri, (code, out, err) = registry
    assert code == 0, err
    payload = json.loads(out.strip().splitlines()[-1])
    assert {"run_id", "model_name", "model_version", "tracking_uri", "metrics"} <= set(payload)
    assert payload["model_name"] == "blr-example" and payload["tracking_uri"] == uri
    assert set(payload["aliases"]) == {"challenger", "champion"}, payload["registration"]
    assert versions(uri) == ([int(payload["model_version"])], payload["model_version"])
    # Not a terminal: one plain status line at the start and one at the end (more every train.status_every_seconds).
    steps = int(payload["metrics"]["steps"])
    assert f"training: {steps:,} steps planned, status every 30 s" in err
    last = next(line for line in err.splitlines() if line.startswith(f"step {steps:,}/{steps:,}  100%"))
    assert "ELBO/datum -" in last and "val -" in last and "steps/s" in last and "done in 0:" in last, last


BAD_INPUTS = [
    ("missing target", "a,b\n1,2\n3,4\n", [], "target column 'y' not found"),
    ("non-numeric feature", "a,y\n1,2\nx,3\n", [], "column 'a' is not numeric"),
    ("nan in data", "a,y\n1,2\nnan,3\n", [], "column 'a' has 1 missing or non-finite"),
    ("inf in data", "a,y\n1,2\n-inf,3\n", [], "column 'a' has 1 missing or non-finite"),
    ("empty file", "", [], "is empty"),
    ("unknown config key", None, ["--set", "train.epochs=3"], "train.epochs: unknown key"),
    ("negative prior scale", None, ["--set", "model.prior.weights.normal.scale=-1"],
     "model.prior.weights.normal.scale: Input should be greater than 0"),
]


@pytest.mark.parametrize("label, csv, extra, message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_fails_clearly_and_registers_nothing(registry, tmp_path, capsys, label, csv, extra, message):
    root, uri, _ = registry
    config = tmp_path / "blr_csv.yaml"
    config.write_text(EXAMPLE_CONFIG.read_text())
    if csv is None:
        make_regression_csv(tmp_path / "data.csv", n=200)
    else:
        (tmp_path / "data.csv").write_text(csv)
    before = versions(uri)
    code, out, err = run_cli(["train", "--config", str(config), "--tracking-uri", uri, "--json", *QUICK, *extra],
                             capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("viops train: error:") and message in lines[0], err
    assert out == ""
    assert versions(uri) == before


def test_prepare_then_train_from_prepared_data(registry, tmp_path, capsys):
    root, uri, _ = registry
    code, out, _ = run_cli(["prepare", "--config", str(root / "blr_csv.yaml"), "--out", str(tmp_path / "p"), "--json"],
                           capsys)
    assert code == 0
    manifest = json.loads(out.strip().splitlines()[-1])
    code, out, err = run_cli(["train", "--config", str(root / "blr_csv.yaml"), "--prepared", manifest["directory"],
                              "--tracking-uri", uri, "--no-register", "--json", *QUICK], capsys)
    assert code == 0, err
    payload = json.loads(out.strip().splitlines()[-1])
    assert payload["model_version"] is None and payload["data_fingerprint"] == manifest["fingerprint"]
    # Registering that run afterwards is idempotent: a retry returns the same version.
    first = run_cli(["register", "--run-id", payload["run_id"], "--model", "blr-example", "--tracking-uri", uri,
                     "--json"], capsys)
    again = run_cli(["register", "--run-id", payload["run_id"], "--model", "blr-example", "--tracking-uri", uri,
                     "--json"], capsys)
    one, two = (json.loads(r[1].strip().splitlines()[-1]) for r in (first, again))
    assert one["created"] and not two["created"] and one["model_version"] == two["model_version"]
    assert one["aliases"] == ["challenger"]  # a champion already exists, so it is not replaced


def test_compare_lines_up_runs_and_marks_the_best(tmp_path, capsys):
    """Two families on one dataset share an experiment; compare shows both and marks the best per metric."""
    (tmp_path / "blr_csv.yaml").write_text(EXAMPLE_CONFIG.read_text())
    make_regression_csv(tmp_path / "data.csv", n=600)
    uri = mlflow_db(tmp_path / "mlflow.db")
    for family in ("mean_field", "full_rank"):
        code, _, err = run_cli(["train", "--config", str(tmp_path / "blr_csv.yaml"), "--tracking-uri", uri, *QUICK,
                                "--set", f"guide.family={family}", "--run-name", family], capsys)
        assert code == 0, err
    code, out, err = run_cli(["compare", "--experiment", "blr-example", "--tracking-uri", uri, "--json"], capsys)
    assert code == 0, err
    payload = json.loads(out.strip().splitlines()[-1])
    runs = {r["run_name"]: r for r in payload["runs"]}
    assert set(runs) == {"mean_field", "full_rank"}
    assert {r["family"] for r in runs.values()} == {"mean_field", "full_rank"}
    assert len({r["data"] for r in runs.values()}) == 1  # same data fingerprint
    nll = {name: r["metrics"]["final/validation_predictive_nll"] for name, r in runs.items()}
    best = payload["best"]["final/validation_predictive_nll"]
    assert runs[min(nll, key=nll.get)]["run_id"] == best
    assert "val NLL" in err and "*" in err  # the human table goes to stderr with --json
    # Rows can be told apart: run id, registered version, start time, the --set overrides, the data fingerprint.
    assert [runs[name]["version"] for name in ("mean_field", "full_rank")] == ["blr-example/1", "blr-example/2"]
    assert runs["full_rank"]["overrides"] == "train.max_epochs=3 guide.family=full_rank"
    assert all(r["started"].endswith("Z") and len(r["data"]) == 16 for r in runs.values())
    # --sort orders best first; --metric narrows the columns; --format csv gives full ids and unrounded values.
    code, out, err = run_cli(["compare", "--experiment", "blr-example", "--tracking-uri", uri, "--json", "--sort",
                              "validation_predictive_nll", "--metric", "psis_khat"], capsys)
    sorted_payload = json.loads(out.strip().splitlines()[-1])
    assert [r["run_id"] for r in sorted_payload["runs"]][0] == best
    assert sorted_payload["metrics"] == ["final/validation_predictive_nll", "final/psis_khat"]
    assert "sorted by validation_predictive_nll, best first" in err
    code, out, _ = run_cli(["compare", "--experiment", "blr-example", "--tracking-uri", uri, "--format", "csv",
                            "--metric", "val NLL"], capsys)
    import csv

    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and {r["run_id"] for r in rows} == {r["run_id"] for r in runs.values()}
    assert {float(r["validation_predictive_nll"]) for r in rows} == set(nll.values())
    code, _, err = run_cli(["compare", "--experiment", "blr-example", "--tracking-uri", uri, "--sort", "elbo"],
                           capsys)
    assert code == 2 and "no compared metric named 'elbo' (metrics: validation_elbo_per_datum" in err
    code, _, err = run_cli(["compare", "--experiment", "nope", "--tracking-uri", uri], capsys)
    assert code == 2 and "no MLflow experiment named 'nope' (experiments: " in err


def test_lightning_s_info_lines_stay_out_after_another_framework_replaces_the_log_handlers(caplog):
    """Airflow's ``dag.test`` replaces the root handlers (and their filters); the demo then trains in-process. The
    litlogger tip and "GPU available" must not reach the log, whoever owns the handlers; Lightning's warnings do."""
    import logging

    import pytorch_lightning as pl

    from viops.cli import quiet_libraries

    quiet_libraries()
    with caplog.at_level(logging.INFO):
        pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_epochs=1)
        logging.getLogger("pytorch_lightning.utilities.rank_zero").warning("kept")
    lightning = [r.getMessage() for r in caplog.records if r.name.startswith("pytorch_lightning")]
    assert lightning == ["kept"], lightning
