"""Every DAG file parses with no import error and touches neither the metadata DB nor the network at parse time.

The DAG processor parses each file every few seconds; a query or a connection there slows every scheduler loop and
fails outright where tasks cannot reach the DB (Airflow 3). The files are parsed in a child process whose metadata
DB points nowhere, with SQLAlchemy's cursor events recorded and sockets refused.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.dags.conftest import REPO

PARSE = r"""
import json, socket, sqlite3, sqlite3.dbapi2, sys, traceback

attempts = []  # recorded as well as refused: a DAG file that swallows the error is still caught

def refuse(*args, **kwargs):
    attempts.append(traceback.format_stack(limit=8)[-2].strip())
    raise RuntimeError("network or database access at DAG parse time")

socket.socket.connect = refuse
socket.create_connection = refuse
sqlite3.connect = sqlite3.dbapi2.connect = refuse

from sqlalchemy import event
from sqlalchemy.engine import Engine

queries = []
event.listen(Engine, "before_cursor_execute", lambda conn, cursor, statement, *rest: queries.append(statement))

from airflow.dag_processing.dagbag import DagBag

bag = DagBag(dag_folder=sys.argv[1])
print(json.dumps({"errors": {k: str(v) for k, v in bag.import_errors.items()}, "dags": sorted(bag.dag_ids),
                  "queries": queries, "attempts": attempts}))
"""


def test_every_dag_parses_without_database_or_network_access(tmp_path):
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        # A DB that does not exist: a query would fail even if it got past the refusals.
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path / 'no-such-dir' / 'airflow.db'}",
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:9",
        "PYTHONPATH": str(REPO),
    }
    proc = subprocess.run([sys.executable, "-c", PARSE, str(REPO / "dags")], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["errors"] == {}
    assert result["dags"] == ["svi_retrain", "vi_monitoring"]
    assert result["queries"] == [] and result["attempts"] == []
    assert not (tmp_path / "no-such-dir").exists()


def test_a_failure_a_retry_would_repeat_fails_the_task_at_once():
    """Bad input, a refused signature, a diverged fit or a rejected promotion (in the task's process or a child
    ``viops``'s exit code) fails every task of both DAGs without retries; a lost connection or a busy lease keeps
    the retries."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk import RetryAction

    from pipelines.child_process import CLIError, CLIRefused
    from pipelines.config.base import ConfigError
    from pipelines.tables import DataError

    bag = DagBag(dag_folder=str(REPO / "dags"))
    for dag_id in ("vi_monitoring", "svi_retrain"):
        for task in bag.dags[dag_id].tasks:
            assert task.retries == 2, task.task_id

            def action(exc: BaseException) -> RetryAction:
                return task.retry_policy.evaluate(exc, try_number=1, max_tries=3).action

            for permanent in (DataError("window lacks feature column(s) ['bp']"), ConfigError("train.lr: < 0"),
                              CLIRefused(["train"], 2, "error: bad config"), CLIRefused(["train"], 3, "diverged"),
                              CLIRefused(["promote"], 6, "signature"), CLIRefused(["promote"], 1, "rejected")):
                assert action(permanent) == RetryAction.FAIL, (dag_id, task.task_id, permanent)
            for transient in (CLIError(["train"], 4, "tracking server unreachable"), CLIError(["promote"], 5, "busy"),
                              ConnectionError("refused"), ValueError("no window of the data interval")):
                assert action(transient) == RetryAction.DEFAULT, (dag_id, task.task_id, transient)
