"""A small client of Airflow 3's REST API (``/api/v2``): a JWT from ``/auth/token``, then DAG-run calls."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass

__all__ = ["AirflowAPI", "AirflowUnavailable"]


class AirflowUnavailable(RuntimeError):
    """Airflow did not answer, or refused the call: the caller should try again later."""


@dataclass
class AirflowAPI:
    """``url``: the api-server (``http://airflow:8080``). With ``username``/``password`` the token comes from
    ``POST /auth/token`` (the simple auth manager's users); without them from ``GET /auth/token``, which only an
    api-server with ``simple_auth_manager_all_admins`` answers."""

    url: str
    username: str | None = None
    password: str | None = None
    timeout: float = 10.0
    _token: str | None = None

    def _request(self, method: str, path: str, body: dict | None = None, *, token: str | None = None) -> dict:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(f"{self.url.rstrip('/')}{path}", method=method, headers=headers,
                                         data=None if body is None else json.dumps(body).encode())
        with urllib.request.urlopen(request, timeout=self.timeout) as resp:
            return json.loads(resp.read() or b"{}")

    def token(self) -> str:
        if self._token is None:
            try:
                if self.username:
                    reply = self._request("POST", "/auth/token",
                                          {"username": self.username, "password": self.password or ""})
                else:
                    reply = self._request("GET", "/auth/token")
            except urllib.error.HTTPError as exc:
                raise AirflowUnavailable(f"Airflow at {self.url} refused a token ({exc.code} {exc.reason}); check "
                                         "VIOPS_AIRFLOW_USERNAME and VIOPS_AIRFLOW_PASSWORD") from None
            except OSError as exc:
                raise AirflowUnavailable(f"Airflow at {self.url} is unreachable: {exc}") from None
            self._token = reply["access_token"]
        return self._token

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        """``/api/v2`` + ``path``; a token that expired is renewed once. HTTP errors other than 401 propagate."""
        for attempt in (1, 2):
            try:
                return self._request(method, f"/api/v2{path}", body, token=self.token())
            except urllib.error.HTTPError as exc:
                if exc.code == 401 and attempt == 1:
                    self._token = None
                    continue
                raise
            except OSError as exc:
                raise AirflowUnavailable(f"Airflow at {self.url} is unreachable: {exc}") from None
        raise AssertionError("unreachable")

    def trigger(self, dag_id: str, run_id: str, conf: dict) -> dict:
        """Start ``dag_id`` with ``run_id`` and ``conf``; a run with that id already there is returned, not started
        again (``{"dag_run_id", "state", "created": bool}``)."""
        try:
            run = self.call("POST", f"/dags/{dag_id}/dagRuns", {"dag_run_id": run_id, "logical_date": None,
                                                               "conf": conf})
            return {"dag_run_id": run["dag_run_id"], "state": run.get("state"), "created": True}
        except urllib.error.HTTPError as exc:
            if exc.code != 409:
                detail = exc.read().decode(errors="replace")[:500]
                raise AirflowUnavailable(f"Airflow refused to trigger {dag_id} ({exc.code}): {detail}") from None
        run = self.call("GET", f"/dags/{dag_id}/dagRuns/{urllib.request.quote(run_id, safe='')}")
        return {"dag_run_id": run["dag_run_id"], "state": run.get("state"), "created": False}
