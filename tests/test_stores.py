"""The MLflow stores tests set up from a template (tests/conftest.py, mlflow_db) are the stores MLflow makes."""

from __future__ import annotations

import sqlite3
from contextlib import closing

from mlflow import MlflowClient

from tests.conftest import SERVER_ARTIFACT_ROOT, mlflow_db


def _schema(path) -> tuple:
    """The migration a store is at and each table's columns (name, type, not null, key). Not the tables' SQL text:
    SQLite migrations rebuild tables, and two stores MLflow makes may list a table's constraints in another order."""
    with closing(sqlite3.connect(path)) as db:
        version = db.execute("SELECT version_num FROM alembic_version").fetchall()
        names = [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        columns = {name: sorted((c[1], c[2], c[3], c[5]) for c in db.execute(f'PRAGMA table_info("{name}")'))
                   for name in names}
    return version, columns


def test_a_copied_store_is_what_mlflow_makes_and_is_used_as_one(tmp_path):
    made = f"sqlite:///{tmp_path / 'made' / 'mlflow.db'}"
    (tmp_path / "made").mkdir()
    MlflowClient(made, made).search_experiments()
    uri = mlflow_db(tmp_path / "copied" / "mlflow.db")
    assert _schema(tmp_path / "copied" / "mlflow.db") == _schema(tmp_path / "made" / "mlflow.db")
    client = MlflowClient(uri, uri)
    (default,) = client.search_experiments()
    assert default.name == "Default" and default.artifact_location == str(tmp_path / "copied" / "mlruns" / "0")
    run = client.create_run(client.create_experiment("e", artifact_location=(tmp_path / "a").as_uri())).info.run_id
    client.log_metric(run, "m", 1.0)
    client.create_registered_model("model")
    assert client.get_metric_history(run, "m")[0].value == 1.0 and client.get_registered_model("model").name


def test_an_existing_store_is_left_as_it_is(tmp_path):
    uri = mlflow_db(tmp_path / "mlflow.db")
    MlflowClient(uri, uri).create_experiment("kept", artifact_location=(tmp_path / "a").as_uri())
    assert mlflow_db(tmp_path / "mlflow.db") == uri
    assert {e.name for e in MlflowClient(uri, uri).search_experiments()} == {"Default", "kept"}


def test_a_servers_store_keeps_the_default_experiments_artifacts_behind_the_server(tmp_path):
    uri = mlflow_db(tmp_path / "backend.db", SERVER_ARTIFACT_ROOT)  # as `mlflow server --artifacts-destination` does
    assert MlflowClient(uri, uri).get_experiment("0").artifact_location == "mlflow-artifacts:/0"
