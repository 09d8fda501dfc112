"""Bad windows and bad configs: a clear error or a page naming the column, nothing reaching the model, nothing
registered, promoted or rolled back, and no traceback."""

from __future__ import annotations

import contextlib
import io
import json
import socket
import threading

import pandas as pd
import pytest
from mlflow import MlflowClient

from viops.cli import main


def run(argv: list[str]) -> tuple[int, dict | None, str]:
    """``viops <argv> --json`` in this process: ``(exit code, JSON result or None, stderr)``."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([*argv, "--json"])
    lines = out.getvalue().strip().splitlines()
    return code, (json.loads(lines[-1]) if lines else None), err.getvalue()


def _state(uri: str) -> tuple[list[str], str]:
    client = MlflowClient(uri, uri)
    versions = sorted(v.version for v in client.search_model_versions("name='blr-example'"))
    return versions, str(client.get_model_version_by_alias("blr-example", "champion").version)


def _window(root, name: str, change) -> str:
    frame = pd.read_csv(root / "data.csv").head(400).copy()
    frame = change(frame) if change else frame
    path = root / f"{name}.csv"  # CSV: a column may mix numbers and text, as producers' files do
    frame.to_csv(path, index=False)
    return str(path)


def _huge(frame):
    frame.loc[5, "x1"] = 1e308
    return frame


def _boolean(frame):
    frame["x2"] = frame["x2"] > 0
    return frame


def _string_cell(frame):
    frame["x0"] = frame["x0"].astype(object)
    frame.loc[17, "x0"] = "twelve"
    return frame


@pytest.mark.parametrize("name, change, column, problem", [
    ("huge", _huge, "x1", "1 value(s) beyond 1e+06 reference SDs of its mean (first 1e+308)"),
    ("boolean", _boolean, "x2", "dtype bool"),
    ("string_cell", _string_cell, "x0", "1 cell(s) are not numbers, first 'twelve' at row 17"),
])
def test_a_window_that_breaks_the_schema_pages_naming_the_column_and_changes_nothing(example, name, change, column,
                                                                                    problem, monkeypatch):
    root, uri = example
    monkeypatch.chdir(root)
    before = _state(uri)
    code, result, err = run(["monitor", "--model", "blr-example", "--window", _window(root, name, change),
                             "--tracking-uri", uri, "--state-dir", str(root / f"state-{name}"), "--execute"])
    assert code == 0, err
    decision = result["decision"]
    assert decision["action"] == "page" and decision["alert"] == "ViopsInputSchema", decision
    assert f"{column}: " in decision["reason"] and problem in decision["reason"], decision["reason"]
    assert problem in result["inputs"]["schema_problems"][column]
    assert result["executed"] is None and _state(uri) == before
    # nothing with a bad value reached the model
    assert result["scoring"].get("scored_now", 0) <= 400 - (1 if name == "huge" else 400)


def test_a_pushgateway_that_answers_garbage_loses_no_verdict(example, monkeypatch):
    root, uri = example
    monkeypatch.chdir(root)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def garbage() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(b"this is not HTTP\r\n\r\n")

    threading.Thread(target=garbage, daemon=True).start()
    try:
        code, result, err = run(["monitor", "--model", "blr-example", "--window", _window(root, "plain", None),
                                 "--tracking-uri", uri, "--state-dir", str(root / "state-push"),
                                 "--pushgateway", f"127.0.0.1:{listener.getsockname()[1]}"])
    finally:
        listener.close()
    assert code == 0, err
    assert result["decision"]["action"] == "none" and result["metrics"]["pushed"] is False
    assert "Traceback" not in err


BAD_CONFIGS = {
    "constant target": ({"data.path": "constant_y.csv"}, "the target is constant over the"),
    "constant feature": ({"data.path": "constant_x.csv"}, "column(s) are constant over the"),
    "no features": ({"data.features": []}, "data.features: List should have at least 1 item"),
    "repeated feature": ({"data.features": ["x0", "x0"]}, "features lists a column more than once"),
    "duplicate CSV columns": ({"data.path": "duplicate_columns.csv"}, "appear more than once in the header"),
    "model name with a space": ({"registry.model_name": "has space"}, "registry.model_name: String should match"),
    "model name with ..": ({"registry.model_name": "../evil"}, "registry.model_name: String should match"),
    "model name with /": ({"registry.model_name": "a/b"}, "registry.model_name: String should match"),
    "experiment path": ({"tracking.experiment": "../x y"}, "tracking.experiment: String should match"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_a_bad_config_exits_2_before_anything_is_trained(example, tmp_path, case, monkeypatch):
    import yaml

    root, uri = example
    monkeypatch.chdir(tmp_path)
    data = pd.read_csv(root / "data.csv").head(500)
    data.assign(y=1.5).to_csv(tmp_path / "constant_y.csv", index=False)
    data.assign(x1=2.0).to_csv(tmp_path / "constant_x.csv", index=False)
    (tmp_path / "duplicate_columns.csv").write_text("x0,x0,y\n" + "\n".join(f"{i},{i * 2},{i % 7}" for i in range(50)))
    data.to_csv(tmp_path / "data.csv", index=False)
    config = yaml.safe_load((root / "blr_csv.yaml").read_text())
    changes, message = BAD_CONFIGS[case]
    for dotted, value in changes.items():
        section, key = dotted.split(".")
        config.setdefault(section, {})[key] = value
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    runs_before = len(MlflowClient(uri, uri).search_runs(
        [e.experiment_id for e in MlflowClient(uri, uri).search_experiments()]))
    code, result, err = run(["train", "--config", str(tmp_path / "bad.yaml"), "--tracking-uri", uri])
    assert code == 2, err
    assert message in err and err.strip().count("\n") == 0 and "Traceback" not in err, err
    assert len(MlflowClient(uri, uri).search_runs(
        [e.experiment_id for e in MlflowClient(uri, uri).search_experiments()])) == runs_before


def test_a_config_that_is_not_utf8_is_one_line(tmp_path):
    (tmp_path / "latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    code, _, err = run(["train", "--config", str(tmp_path / "latin1.yaml")])
    assert code == 2 and "is not UTF-8 text" in err and err.strip().count("\n") == 0, err
    bad_data = tmp_path / "latin1.csv"
    bad_data.write_bytes("x0,y\n1,caf\xe9\n".encode("latin-1"))
    (tmp_path / "c.yaml").write_text("name: c\ndata: {path: latin1.csv, target: y}\n")
    code, _, err = run(["prepare", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "p")])
    assert code == 2 and "latin1.csv" in err and err.strip().count("\n") == 0, err


def test_an_unknown_run_id_is_bad_input_not_a_traceback(example):
    _, uri = example
    before = _state(uri)
    code, result, err = run(["register", "--run-id", "0" * 32, "--model", "blr-example", "--tracking-uri", uri])
    assert code == 2 and result is None and "Traceback" not in err
    assert err.strip() == f"viops register: not found by the tracking server at {uri}: Run with id={'0' * 32} not found"
    assert _state(uri) == before
