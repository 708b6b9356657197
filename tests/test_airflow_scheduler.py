"""The nightly DAG run by a real Airflow: ``fleetwatch airflow up``, a run triggered through the
REST API the way the UI does it (no logical date), the scheduler and LocalExecutor, then ``down``."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pandas as pd
import pytest
from airflow_api import Api, free_port, wait_for

from fleetwatch.app import airflow_stack
from fleetwatch.app.orchestration import nightly_dag_id
from fleetwatch.core.lake import Lake
from fleetwatch.core.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DAY = dt.date(2026, 1, 1)
DATASET = "sched"
WAIT_S = 900  # a bound on waiting for a hung stack, not a measured figure


@pytest.fixture
def stack_settings(settings) -> Settings:
    # the schedule starts tomorrow, so unpausing the DAG schedules nothing: the one run is the triggered one
    tomorrow = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1)
    s = Settings(home=settings.home, spark_master="local[2]", spark_shuffle_partitions=2, schedule_start=tomorrow)
    yield s
    airflow_stack.down(s)


def test_scheduler_runs_a_nightly_run_triggered_like_the_ui(stack_settings):
    from feature_store.views import view_for
    from fleetwatch.core.specs import load_spec
    from fleetwatch.core.synthetic import generate_fleet

    s = stack_settings
    generate_fleet(s, DATASET, entities=2, days=1, start=DAY, seed=2)
    dag_id = nightly_dag_id(DATASET)

    info = airflow_stack.up(s, port=free_port())
    assert [(p.name, p.running) for p in airflow_stack.status(s)] == [(n, True) for n in airflow_stack.PROCESSES]
    config = (Path(s.airflow_home) / "airflow.cfg").read_text()
    assert "executor = LocalExecutor" in config and f"sql_alchemy_conn = sqlite:///{s.airflow_home}/airflow.db" in config

    deadline = time.monotonic() + WAIT_S
    api = Api(info.url, info.user, info.password)
    wait_for(f"the DAG processor to parse {dag_id}", lambda: api.get(f"/api/v2/dags/{dag_id}"), deadline)
    assert api.send("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})["is_paused"] is False
    run = api.send("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": {"day": DAY.isoformat()}})
    assert run["logical_date"] is None

    path = f"/api/v2/dags/{dag_id}/dagRuns/{run['dag_run_id']}"
    finished = wait_for("the run to finish", lambda: (r := api.get(path))["state"] in ("success", "failed") and r, deadline)
    tasks = api.get(f"{path}/taskInstances")["task_instances"]
    states = {t["task_id"]: t["state"] for t in tasks}
    assert finished["state"] == "success", states
    assert states == {
        "validate": "success", "features": "success", "has_champion": "success", "drift_check": "skipped",
        "request_retrain": "skipped", "score": "skipped", "publish": "skipped",
    }
    assert {t["rendered_fields"]["application_args"][-1] for t in tasks if t["task_id"] in ("validate", "features")} == {
        DAY.isoformat()
    }

    lake = Lake(s.lake_root)
    view = view_for(load_spec(s.specs_dir, DATASET))
    raw = pd.read_parquet(lake.raw(DATASET, DAY))
    featured = pd.read_parquet(lake.features(DATASET, view.ref, DAY))
    assert sorted(featured["entity_id"].unique()) == sorted(raw["entity_id"].unique())
    assert lake.days(lake.zone("validation", DATASET)) == [DAY]

    assert sorted(airflow_stack.down(s)) == sorted(airflow_stack.PROCESSES)
    assert not any(p.running for p in airflow_stack.status(s))
