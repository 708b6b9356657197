"""What the tests that drive a real Airflow share: a free port, the REST calls, waiting on a run."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest

from fleetwatch.app.background import free_port  # noqa: F401  (the tests import it from here)


class Api:
    """The few Airflow 3 REST calls the tests need, with a simple auth manager token."""

    def __init__(self, url: str, user: str, password: str):
        self.url = url
        token = self._call("POST", "/auth/token", {"username": user, "password": password}, auth=False)
        self.token = token["access_token"]

    def _call(self, method: str, path: str, body: dict | None = None, *, auth: bool = True) -> dict:
        request = urllib.request.Request(
            f"{self.url}{path}", method=method, data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {self.token}"} if auth else {})},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"{}")

    def get(self, path: str) -> dict:
        return self._call("GET", path)

    def send(self, method: str, path: str, body: dict) -> dict:
        return self._call(method, path, body)

    def trigger(self, dag_id: str, conf: dict) -> str:
        """Trigger a run of ``dag_id`` as the UI does (no logical date); its run id."""
        run = self.send("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf})
        return run["dag_run_id"]

    def finished_run(self, dag_id: str, run_id: str, deadline: float) -> tuple[str, dict[str, str]]:
        """Wait until the run ends; its state and each task's state."""
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}"
        run = wait_for(f"run {run_id} of {dag_id} to finish",
                       lambda: (r := self.get(path))["state"] in ("success", "failed") and r, deadline)
        tasks = self.get(f"{path}/taskInstances")["task_instances"]
        return run["state"], {t["task_id"]: t["state"] for t in tasks}


def wait_for(what: str, probe, deadline: float):
    """Poll ``probe`` until it returns something true (a 404 counts as not yet); fail the test past ``deadline``."""
    while True:
        try:
            found = probe()
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise
            found = None
        if found:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(3)
