"""The Airflow DAGs: integrity of the DAG folder, the Spark connection, and real in-process runs."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from fleetwatch.app.orchestration import (
    DAGS_FOLDER,
    airflow_env,
    nightly_dag_id,
    nightly_interval,
    nightly_logical_date,
    partition_day,
    retrain_dag_id,
    settings_env,
    task_states,
    window_end,
)
from fleetwatch.core.settings import Settings
from fleetwatch.core.specs import DatasetSpec, MetricSpec, write_spec

DATASETS = ("alpha", "beta")
DAY = dt.date(2026, 1, 1)


@pytest.fixture(autouse=True)
def restore_environ():
    """prepare_airflow exports Airflow's and FleetWatch's variables process-wide: undo that."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def two_specs(settings):
    for name in DATASETS:
        write_spec(settings.specs_dir, DatasetSpec(name=name, metrics=[MetricSpec(name="cpu", min=0, max=100)]))
    return settings


@pytest.fixture
def dag_bag(two_specs):
    """The DAG folder parsed in this process, configured (env only) from the test's settings."""
    os.environ.update(airflow_env(two_specs))
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS_FOLDER))


def _airflow(settings: Settings, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **airflow_env(settings)}
    return subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), *args], env=env, capture_output=True, text=True, timeout=300
    )


def test_airflow_env_rebuilds_the_same_settings(settings):
    settings = Settings(home=settings.home, spark_master="spark://127.0.0.1:7077", seed=7)
    env = airflow_env(settings)

    assert env["AIRFLOW_HOME"] == str(settings.airflow_home)
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == f"sqlite:///{settings.airflow_home}/airflow.db"
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert {p.name for p in Path(env["AIRFLOW__CORE__DAGS_FOLDER"]).glob("*.py")} >= {
        "fleetwatch_nightly.py",
        "fleetwatch_retrain.py",
    }
    assert json.loads(env["AIRFLOW_CONN_FLEETWATCH_SPARK"]) == {"conn_type": "spark", "host": "spark://127.0.0.1:7077"}
    first_on_path = Path(env["PATH"].split(os.pathsep)[0])
    assert (first_on_path / "spark-submit").is_file() and first_on_path == Path(sys.executable).parent
    assert env["PYSPARK_PYTHON"] == env["PYSPARK_DRIVER_PYTHON"] == sys.executable
    for key in list(os.environ):
        if key.startswith("FLEETWATCH_"):
            del os.environ[key]
    os.environ.update(settings_env(settings))
    assert Settings() == settings


@pytest.mark.parametrize(
    "master",
    ["local[*]", "local[2]", "yarn", "spark://127.0.0.1:7077", "spark://h1:7077,h2:7077"],
)
def test_connection_env_var_gives_spark_submit_the_master(settings, master):
    os.environ.update(airflow_env(Settings(home=settings.home, spark_master=master)))
    from airflow.providers.apache.spark.hooks.spark_submit import SparkSubmitHook

    hook = SparkSubmitHook(conn_id=settings.spark_conn_id)
    command = hook._build_spark_submit_command("app.py")

    assert hook._connection["master"] == master
    assert command[:3] == ["spark-submit", "--master", master]


def test_dag_bag_has_one_nightly_and_one_retrain_dag_per_spec(dag_bag, two_specs):
    settings = two_specs
    assert dag_bag.import_errors == {}
    expected = {nightly_dag_id(d) for d in DATASETS} | {retrain_dag_id(d) for d in DATASETS}
    assert set(dag_bag.dag_ids) == expected
    start = dt.datetime.combine(settings.schedule_start, dt.time(), tzinfo=dt.UTC)
    for dag in dag_bag.dags.values():
        dataset = dag.dag_id.split("__")[1]
        assert set(dag.tags) == {"fleetwatch", dataset}
        assert dag.doc_md and dag.start_date == start and dag.max_active_runs == 1
        for task in dag.tasks:
            assert task.retries >= 1 and task.owner == "fleetwatch", task.task_id

    nightly = dag_bag.dags[nightly_dag_id("alpha")]
    assert nightly.catchup is True
    order = {t.task_id: set(t.upstream_task_ids) for t in nightly.tasks}
    assert order == {
        "validate": set(),
        "features": {"validate"},
        "has_champion": {"features"},
        "drift_check": {"has_champion"},
        "request_retrain": {"drift_check", "publish"},
        "score": {"has_champion"},
        "publish": {"score"},
    }
    assert [o.uri for o in nightly.task_dict["request_retrain"].outlets] == ["fleetwatch://drift/alpha"]
    for task_id, job in [("validate", "validate_partition"), ("features", "build_features"),
                         ("drift_check", "check_drift"), ("score", "score_partition")]:
        task = nightly.task_dict[task_id]
        assert Path(task.application).name == f"{job}.py" and Path(task.application).is_file()
        assert task.application_args == ["--dataset", "alpha", "--date", "{{ partition_day }}"]
        assert task._conn_id == settings.spark_conn_id
        assert task.env_vars["PYSPARK_PYTHON"] == sys.executable

    retrain = dag_bag.dags[retrain_dag_id("beta")]
    assert retrain.catchup is False
    assert retrain.timetable.timetable.expression == settings.retrain_cron
    assert retrain.timetable.asset_condition.uri == "fleetwatch://drift/beta"
    train = retrain.task_dict["train"]
    assert Path(train.application).name == "train_models.py"
    assert train.upstream_task_ids == {"window_end"}


def test_nightly_run_for_a_day_has_that_day_as_ds(dag_bag, two_specs):
    """The scheduler's first run covers [start 01:30, start+1 01:30): its logical date (ds) is start."""
    from airflow.serialization.encoders import coerce_to_core_timetable
    from airflow.timetables.base import TimeRestriction

    settings = two_specs
    dag = dag_bag.dags[nightly_dag_id("alpha")]
    start = dt.datetime.combine(settings.schedule_start, dt.time(), tzinfo=dt.UTC)
    info = coerce_to_core_timetable(dag.timetable).next_dagrun_info(
        last_automated_data_interval=None, restriction=TimeRestriction(earliest=start, latest=None, catchup=True)
    )
    assert info.logical_date == nightly_logical_date(settings, settings.schedule_start)
    assert info.logical_date.date() == settings.schedule_start
    assert info.data_interval.end == info.logical_date + dt.timedelta(days=1)
    assert info.run_after >= dt.datetime.combine(settings.schedule_start + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)


def test_dag_files_parse_without_spark_or_mlflow(two_specs):
    """Parsing a DAG file imports no heavy engine (the scheduler parses them every few seconds);
    the parse time is printed for the record, not asserted."""
    script = textwrap.dedent(
        f"""
        import importlib.util, json, sys, time
        import airflow.sdk
        from airflow.sdk import dag, task
        out = {{}}
        for path in {[str(DAGS_FOLDER / "fleetwatch_nightly.py"), str(DAGS_FOLDER / "fleetwatch_retrain.py")]!r}:
            t = time.perf_counter()
            spec = importlib.util.spec_from_file_location("dagfile", path)
            spec.loader.exec_module(importlib.util.module_from_spec(spec))
            out[path] = time.perf_counter() - t
        heavy = [m for m in ("pyspark", "mlflow", "great_expectations", "torch", "sklearn") if m in sys.modules]
        print(json.dumps({{"seconds": out, "heavy": heavy}}))
        """
    )
    env = {**os.environ, **airflow_env(two_specs)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["heavy"] == []
    assert set(result["seconds"]) == {str(DAGS_FOLDER / "fleetwatch_nightly.py"), str(DAGS_FOLDER / "fleetwatch_retrain.py")}
    print("DAG file parse seconds:", result["seconds"])


def test_partition_day_is_the_conf_day_then_the_logical_date_then_yesterday():
    """A manual run from the UI has no logical date (Airflow 3): it takes the conf's day, else yesterday."""
    logical = dt.datetime(2026, 1, 4, 1, 30, tzinfo=dt.UTC)
    ran = dt.datetime(2026, 3, 10, 0, 20, tzinfo=dt.UTC)

    assert partition_day(SimpleNamespace(conf={}, logical_date=logical, run_after=ran)) == "2026-01-04"
    assert partition_day(SimpleNamespace(conf={"day": "2026-01-02"}, logical_date=logical, run_after=ran)) == "2026-01-02"
    assert partition_day(SimpleNamespace(conf={"day": None}, logical_date=None, run_after=ran)) == "2026-03-09"
    assert partition_day(SimpleNamespace(conf=None, logical_date=None, run_after=ran)) == "2026-03-09"


def test_window_end_prefers_conf_then_drift_events_then_the_day_before():
    events = [SimpleNamespace(extra=extra) for extra in ({"day": "2026-01-03"}, {"day": "2026-01-05"}, {})]
    sunday = dt.datetime(2026, 1, 11, 3, 0, tzinfo=dt.UTC)

    assert window_end({"day": "2026-01-07"}, events, sunday) == dt.date(2026, 1, 7)
    assert window_end({}, events, sunday) == dt.date(2026, 1, 5)
    assert window_end(None, [], sunday) == dt.date(2026, 1, 10)


@pytest.mark.integration
@pytest.mark.slow
def test_airflow_cli_lists_every_dag_and_no_import_error(two_specs):
    from fleetwatch.app.orchestration import prepare_airflow

    prepare_airflow(two_specs)
    listed = _airflow(two_specs, "dags", "list", "--local", "-o", "json")
    errors = _airflow(two_specs, "dags", "list-import-errors", "--local", "-o", "json")

    assert listed.returncode == 0, listed.stderr[-2000:]
    rows = json.loads(listed.stdout.strip().splitlines()[-1])
    assert {r["dag_id"] for r in rows} == {nightly_dag_id(d) for d in DATASETS} | {retrain_dag_id(d) for d in DATASETS}
    assert errors.returncode == 0, errors.stderr[-2000:]
    assert json.loads(errors.stdout.strip().splitlines()[-1] or "[]") == []


@pytest.mark.integration
@pytest.mark.slow
def test_nightly_dag_fails_on_duplicate_rows_and_writes_no_features(settings):
    from fleetwatch.app.orchestration import last_failures, run_nightly
    from fleetwatch.core.lake import Lake, write_pandas_partition

    settings = Settings(home=settings.home, spark_master="local[2]", spark_shuffle_partitions=2)
    write_spec(settings.specs_dir, DatasetSpec(name="dup", metrics=[MetricSpec(name="cpu", min=0, max=100)]))
    before = dt.datetime.now(dt.UTC)
    ts = pd.date_range(pd.Timestamp(DAY, tz="UTC"), periods=3, freq="min")
    rows = pd.DataFrame({"entity_id": ["a", "a", "a", "a"], "ts": [*ts, ts[0]], "cpu": [1.0, 2.0, 3.0, 1.0]})
    lake = Lake(settings.lake_root)
    write_pandas_partition(lake, rows, lake.raw("dup", DAY))

    state = run_nightly(settings, "dup", DAY)

    assert state == "failed"
    failures = last_failures()
    assert list(failures) == ["validate"]
    assert "dup dt=2026-01-01" in failures["validate"] and "unique" in failures["validate"]
    assert task_states(nightly_dag_id("dup"), nightly_logical_date(settings, DAY)) == {
        "validate": "failed",
        "features": "upstream_failed",
        "has_champion": "upstream_failed",
        "drift_check": "upstream_failed",
        "request_retrain": "upstream_failed",
        "score": "upstream_failed",
        "publish": "upstream_failed",
    }
    _assert_run_continues_like_a_scheduled_one(settings, "dup", before)
    assert not Path(lake.features("dup", "x", DAY)).parent.parent.exists()
    assert not Path(lake.raw("dup", DAY)).exists() and Path(lake.partition("quarantine", "dup", DAY)).exists()


def _assert_run_continues_like_a_scheduled_one(settings: Settings, dataset: str, before: dt.datetime) -> None:
    """The in-process run started now (not at its logical date) and has a scheduled run's interval,
    so a scheduler's next run after it is the next day's, not the same logical date again."""
    from airflow.models.dagrun import DagRun
    from airflow.serialization.encoders import coerce_to_core_timetable
    from airflow.timetables.base import DataInterval, TimeRestriction

    from fleetwatch.app.orchestration import load_dag

    run = DagRun.find(dag_id=nightly_dag_id(dataset), logical_date=nightly_logical_date(settings, DAY))[0]
    assert run.start_date >= before and run.end_date >= run.start_date
    assert (run.data_interval_start, run.data_interval_end) == nightly_interval(settings, DAY)
    timetable = coerce_to_core_timetable(load_dag(nightly_dag_id(dataset)).timetable)
    start = dt.datetime.combine(settings.schedule_start, dt.time(), tzinfo=dt.UTC)
    following = timetable.next_dagrun_info(
        last_automated_data_interval=DataInterval(run.data_interval_start, run.data_interval_end),
        restriction=TimeRestriction(earliest=start, latest=None, catchup=True),
    )
    assert following.logical_date == nightly_logical_date(settings, DAY + dt.timedelta(days=1))


@pytest.mark.integration
@pytest.mark.slow
def test_retrain_dag_trains_on_the_window_ending_at_the_given_day(settings):
    """Without feature partitions the train job stops with its one-line error, naming the window end."""
    from fleetwatch.app.orchestration import last_failures, run_retrain

    settings = Settings(home=settings.home, spark_master="local[2]", spark_shuffle_partitions=2)
    write_spec(settings.specs_dir, DatasetSpec(name="fresh", metrics=[MetricSpec(name="cpu")]))

    state = run_retrain(settings, "fresh", dt.date(2026, 1, 5))

    assert state == "failed"
    assert list(last_failures()) == ["train"]
    assert "fresh" in last_failures()["train"] and "ending 2026-01-05" in last_failures()["train"]
