"""A real ``mlflow server`` on 127.0.0.1 for the integration tests of a module."""

from __future__ import annotations

import pytest

from tests.servers import start_mlflow_server, stop


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    url, proc = start_mlflow_server(tmp_path_factory.mktemp("mlflow-server"))
    yield url
    stop(proc)
