"""Credentials: against a real ``mlflow server --app-name basic-auth``, viops works with the credentials in the
environment or in the URI, a user without permission on the model cannot promote (a clear error, nothing
changed), and no password appears in anything viops prints."""

from __future__ import annotations

import os

import pytest
from mlflow import MlflowClient

from tests.conftest import EXAMPLE_CONFIG, make_regression_csv
from tests.faults.conftest import viops
from tests.servers import kill_server, start_mlflow_server

ADMIN_PW = "adm1n-Secret-pw"
BOB_PW = "b0b-Secret-pw"


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("auth")
    (root / "basic_auth.ini").write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{root / 'auth.db'}\nadmin_username = admin\nadmin_password = {ADMIN_PW}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # as docs/operations.md advises: a password is hashed once a minute, not on each of a run's requests
        "auth_cache_ttl_seconds = 60\n")
    url, proc = start_mlflow_server(
        root, "--app-name", "basic-auth", own_session=True,
        env={"MLFLOW_AUTH_CONFIG_PATH": str(root / "basic_auth.ini"),
             "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-secret-key"})
    from mlflow.server.auth.client import AuthServiceClient

    os.environ.update(MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD=ADMIN_PW)
    try:
        AuthServiceClient(url).create_user("bob", BOB_PW)
    finally:
        del os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]
    (root / "blr_csv.yaml").write_text(EXAMPLE_CONFIG.read_text())
    make_regression_csv(root / "data.csv")
    yield root, url
    kill_server(proc)


def _no_secret(*ran) -> None:
    for r in ran:
        for secret in (ADMIN_PW, BOB_PW):
            assert secret not in r.stdout + r.stderr


def test_credentials_in_the_environment_or_the_uri_work_and_are_never_printed(auth_server):
    root, url = auth_server
    admin = {"MLFLOW_TRACKING_URI": url, "MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": ADMIN_PW}
    first = viops("train", "--config", str(root / "blr_csv.yaml"), env=admin, cwd=root)
    assert first.code == 0 and first.result["model_version"] == "1", first.stderr[-3000:]
    in_uri = url.replace("http://", f"http://admin:{ADMIN_PW}@")
    second = viops("train", "--config", str(root / "blr_csv.yaml"), "--set", "train.seed=1",
                   env={"MLFLOW_TRACKING_URI": in_uri}, cwd=root)
    assert second.code == 0 and second.result["model_version"] == "2", second.stderr[-3000:]
    assert second.result["tracking_uri"] == url.replace("http://", "http://admin:***@")
    assert "admin:***@" in second.stderr  # the 'look: mlflow ui ...' hint, masked
    _no_secret(first, second)


def test_a_user_without_permission_cannot_promote_and_changes_nothing(auth_server):
    root, url = auth_server
    admin = MlflowClient(url, url)
    os.environ.update(MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD=ADMIN_PW)
    try:
        champion = admin.get_model_version_by_alias("blr-example", "champion").version
        tags = dict(admin.get_model_version("blr-example", "2").tags)
    finally:
        del os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]
    bob = {"MLFLOW_TRACKING_URI": url, "MLFLOW_TRACKING_USERNAME": "bob", "MLFLOW_TRACKING_PASSWORD": BOB_PW}
    ran = viops("promote", "--model", "blr-example", "--version", "2", "--reason", "not mine to promote", env=bob,
                cwd=root)
    assert ran.code == 2 and ran.last_line.startswith(
        f"viops promote: permission denied by the tracking server at {url}"), ran.stderr[-2000:]
    assert "Traceback" not in ran.stderr
    wrong = viops("promote", "--model", "blr-example", "--version", "2", "--reason", "x", cwd=root,
                  env={**bob, "MLFLOW_TRACKING_PASSWORD": "not-" + BOB_PW})
    assert wrong.code == 2 and "permission denied" in wrong.last_line, wrong.stderr[-2000:]
    _no_secret(ran, wrong)
    os.environ.update(MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD=ADMIN_PW)
    try:
        assert admin.get_model_version_by_alias("blr-example", "champion").version == champion
        assert dict(admin.get_model_version("blr-example", "2").tags) == tags
        names = [m.name for m in admin.search_registered_models()]
    finally:
        del os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]
    assert "blr-example.viops-lease" not in names
