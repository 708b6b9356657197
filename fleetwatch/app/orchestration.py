"""Airflow wiring: the environment Airflow runs in, DAG ids and assets, and the in-process runner.

Airflow reads its configuration when it is first imported, so :func:`prepare_airflow` sets the
environment before any ``airflow`` import (and re-points an already imported Airflow at it).
Everything is given through environment variables, the Spark connection included
(``AIRFLOW_CONN_<ID>``), so no connection or setting is stored in Airflow's metadata DB.
Importing this module imports no Airflow, Spark or MLflow.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from croniter import croniter

import jobs
from fleetwatch.core.errors import FleetWatchError
from fleetwatch.core.lake import parse_day
from fleetwatch.core.settings import Settings
from fleetwatch.core.spark import spark_env
from fleetwatch.core.specs import load_spec

log = logging.getLogger(__name__)

DAGS_FOLDER = Path(__file__).resolve().parents[2] / "dags"
NIGHTLY_PREFIX, RETRAIN_PREFIX = "fleetwatch_nightly__", "fleetwatch_retrain__"
DRIFT_ASSET_PREFIX = "fleetwatch://drift/"
_FAILURES: dict[str, str] = {}  # task id -> error, of the last in-process run
_TASKS: list[tuple[str, str, float | None]] = []  # (task id, state, seconds) of the last in-process run


def record_failure(context) -> None:
    """Task failure callback: log the task's error in one line and keep it for :func:`last_failures`."""
    ti = context["ti"]
    lines = str(context.get("exception") or "no error given").strip().splitlines() or ["no error given"]
    _FAILURES[ti.task_id] = lines[-1]
    log.error("%s %s: task %s failed: %s", ti.dag_id, ti.run_id, ti.task_id, lines[-1])


DEFAULT_ARGS = {
    "owner": "fleetwatch",
    "retries": 2,
    "retry_delay": dt.timedelta(minutes=2),
    "on_failure_callback": record_failure,
}


def nightly_dag_id(dataset: str) -> str:
    return f"{NIGHTLY_PREFIX}{dataset}"


def retrain_dag_id(dataset: str) -> str:
    return f"{RETRAIN_PREFIX}{dataset}"


def drift_asset(dataset: str):
    """The Asset a nightly run emits when ``dataset`` drifted; it triggers retraining.

    The emitting task sets the event's extra to ``{"day": "YYYY-MM-DD"}`` (the drifted
    partition), which the retrain run takes as the end of its training window.
    """
    from airflow.sdk import Asset  # lazy: Airflow reads its configuration at first import (prepare_airflow sets it)

    return Asset(f"{DRIFT_ASSET_PREFIX}{dataset}")


def job_path(name: str) -> str:
    """The spark-submit application file of job ``name`` in the installed ``jobs`` package."""
    path = Path(jobs.__file__).resolve().parent / f"{name}.py"
    if not path.is_file():
        raise FleetWatchError(f"spark job {name!r} not found at {path}")
    return str(path)


def spark_connection(master: str) -> dict[str, str]:
    """The Airflow ``spark`` connection whose master is ``master``.

    The Spark provider uses a ``spark`` connection's host as the whole master when it holds
    ``://`` or no port is set, so ``local[*]``, ``yarn``, ``spark://h:7077`` and
    ``k8s://https://h:443`` all pass through unchanged as ``--master``.
    """
    return {"conn_type": "spark", "host": master}


def settings_env(settings: Settings) -> dict[str, str]:
    """``FLEETWATCH_*`` variables that rebuild ``settings`` in another process (a Spark job)."""
    out = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        out[f"FLEETWATCH_{name.upper()}"] = value.isoformat() if isinstance(value, dt.date) else str(value)
    return out


def airflow_env(settings: Settings) -> dict[str, str]:
    """Environment for Airflow (CLI, scheduler or in-process) configured from ``settings``."""
    home = Path(settings.airflow_home)
    bin_dir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    if path.split(os.pathsep)[0] != bin_dir:
        path = f"{bin_dir}{os.pathsep}{path}" if path else bin_dir
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        f"AIRFLOW_CONN_{settings.spark_conn_id.upper()}": json.dumps(spark_connection(settings.spark_master)),
        "PATH": path,
        **spark_env(),
        **settings_env(settings),
    }


def prepare_airflow(settings: Settings) -> dict[str, str]:
    """Point this process's Airflow at ``settings`` and migrate its metadata DB once per home.

    Call it before importing ``airflow``; an Airflow imported earlier (with another home) is
    re-pointed at the new database and DAG folder.
    """
    env = airflow_env(settings)
    os.environ.update(env)
    home = Path(settings.airflow_home)
    home.mkdir(parents=True, exist_ok=True)
    if "airflow.settings" in sys.modules:
        from airflow import settings as airflow_settings  # lazy: imported already (checked above), so only re-pointed

        airflow_settings.configure_vars()
        airflow_settings.reconfigure_orm()
    _migrate_once(home)
    return env


def _migrate_once(home: Path) -> None:
    version = importlib.metadata.version("apache-airflow")
    marker = home / ".fleetwatch-migrated"
    if (home / "airflow.db").is_file() and marker.is_file() and marker.read_text() == version:
        return
    airflow = Path(sys.executable).parent / "airflow"
    done = subprocess.run([str(airflow), "db", "migrate"], capture_output=True, text=True, env=dict(os.environ))
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise FleetWatchError(f"`airflow db migrate` failed for AIRFLOW_HOME={home}: {tail[0]}")
    marker.write_text(version)


def nightly_logical_date(settings: Settings, day: dt.date) -> dt.datetime:
    """Logical date of the nightly run that processes partition ``day`` (its ``{{ ds }}``)."""
    start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
    return croniter(settings.nightly_cron, start - dt.timedelta(seconds=1)).get_next(dt.datetime)


def nightly_interval(settings: Settings, day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """Data interval of the scheduled nightly run for partition ``day``: [D 01:30, D+1 01:30) UTC."""
    start = nightly_logical_date(settings, day)
    return start, croniter(settings.nightly_cron, start).get_next(dt.datetime)


def partition_day(dag_run) -> str:
    """The partition (``YYYY-MM-DD``) a nightly run processes.

    The ``day`` of the run's conf wins (a manual run for any partition); else the day of its
    logical date (a scheduled run's, or one picked in the trigger form); else, for a manual run
    without a logical date (Airflow 3's default from the UI), the day before it runs: the newest
    complete partition.
    """
    conf = getattr(dag_run, "conf", None) or {}
    if conf.get("day"):
        return parse_day(str(conf["day"])).isoformat()
    if dag_run.logical_date is not None:
        return dag_run.logical_date.astimezone(dt.UTC).date().isoformat()
    return (dag_run.run_after.astimezone(dt.UTC).date() - dt.timedelta(days=1)).isoformat()


def window_end(conf: dict | None, asset_events: list, fallback: dt.datetime) -> dt.date:
    """Last partition a retrain run trains on.

    A date given in the run's conf (``{"day": "YYYY-MM-DD"}``) wins; else the newest ``day`` in
    the triggering drift events' extras; else the day before ``fallback`` (the logical date or
    run-after time of a scheduled run, when that day's partition may not be complete).
    """
    if conf and conf.get("day"):
        return parse_day(conf["day"])
    days = [parse_day(e.extra["day"]) for e in asset_events if (e.extra or {}).get("day")]
    if days:
        return max(days)
    return fallback.date() - dt.timedelta(days=1)


def run_nightly(settings: Settings, dataset: str, day: dt.date) -> str:
    """Run the nightly DAG of ``dataset`` for partition ``day`` in-process; the run's state."""
    interval = nightly_interval(settings, day)
    return _run_dag(settings, dataset, nightly_dag_id(dataset), interval[0], None, interval)


def run_retrain(settings: Settings, dataset: str, day: dt.date) -> str:
    """Run the retrain DAG of ``dataset`` for the window ending at ``day`` in-process; its state."""
    logical = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
    return _run_dag(settings, dataset, retrain_dag_id(dataset), logical, {"day": day.isoformat()})


def last_tasks() -> list[tuple[str, str, float | None]]:
    """``(task id, state, seconds)`` of each task of the last in-process run, in the order they started
    (tasks that never started, such as skipped ones, last)."""
    return list(_TASKS)


def last_failures() -> dict[str, str]:
    """Task id -> one-line error of each task that failed in the last in-process run."""
    return dict(_FAILURES)


def _run_dag(
    settings: Settings,
    dataset: str,
    dag_id: str,
    logical_date: dt.datetime,
    conf: dict | None,
    interval: tuple[dt.datetime, dt.datetime] | None = None,
) -> str:
    load_spec(settings.specs_dir, dataset)  # a clear error when the dataset has no spec (so no DAG)
    prepare_airflow(settings)
    dag = load_dag(dag_id)
    _FAILURES.clear()
    _TASKS.clear()
    started = dt.datetime.now(dt.UTC)
    run = dag.test(logical_date=logical_date, run_after=started, run_conf=conf)
    _record_run_dates(dag_id, run.run_id, started, interval)
    _TASKS.extend(_timings(run))
    for task_id in failed_tasks(run):
        _FAILURES.setdefault(task_id, "failed (no error recorded)")
    return _state(run.state)


def _record_run_dates(
    dag_id: str, run_id: str, started: dt.datetime, interval: tuple[dt.datetime, dt.datetime] | None
) -> None:
    """Give an in-process run its real start and, when given, a scheduled run's data interval.

    ``dag.test`` records the logical date as the run's start (a January partition run in December
    showed a 333-day duration) and gives the run a manual data interval, the one *ending* at its
    logical date. A scheduler meeting that run computed its next run as the same logical date,
    found it existing, and logged "run already exists" on every loop; with the interval a
    scheduled run of that logical date has, it moves on to the next day.
    """
    from airflow.models.dagrun import DagRun  # lazy: Airflow reads its configuration at first import
    from airflow.utils.session import create_session  # lazy: as above

    with create_session() as session:
        run = session.query(DagRun).filter(DagRun.dag_id == dag_id, DagRun.run_id == run_id).one()
        run.start_date = run.queued_at = started
        if interval is not None:
            run.data_interval_start, run.data_interval_end = interval


def load_dag(dag_id: str):
    """The DAG ``dag_id`` parsed from the DAG folder, with the folder's import errors if missing."""
    from airflow.dag_processing.dagbag import DagBag  # lazy: Airflow reads its configuration at first import

    bag = DagBag(dag_folder=str(DAGS_FOLDER))
    if bag.import_errors:
        first = next(iter(bag.import_errors.items()))
        raise FleetWatchError(f"DAG file {first[0]} does not import: {first[1].strip().splitlines()[-1]}")
    dag = bag.dags.get(dag_id)
    if dag is None:
        raise FleetWatchError(f"no DAG {dag_id!r} in {DAGS_FOLDER} (known: {', '.join(sorted(bag.dags))})")
    return dag


def task_states(dag_id: str, logical_date: dt.datetime) -> dict[str, str]:
    """Task id -> state (``success``, ``skipped``, ``failed``, ``upstream_failed``...) of the run of
    ``dag_id`` at ``logical_date`` in this process's Airflow metadata DB."""
    from airflow.models.dagrun import DagRun  # lazy: Airflow reads its configuration at first import

    runs = DagRun.find(dag_id=dag_id, logical_date=logical_date)
    if not runs:
        raise FleetWatchError(f"no run of DAG {dag_id!r} at {logical_date.isoformat()}")
    return _states_of(runs[0])


def _timings(run) -> list[tuple[str, str, float | None]]:
    tis = sorted(run.get_task_instances(), key=lambda ti: (ti.start_date is None, ti.start_date or 0, ti.task_id))
    out = []
    for ti in tis:
        ran = ti.start_date is not None and ti.end_date is not None and _state(ti.state) != "skipped"
        out.append((ti.task_id, _state(ti.state), (ti.end_date - ti.start_date).total_seconds() if ran else None))
    return out


def failed_tasks(run) -> list[str]:
    """Ids of the tasks of a DAG run that failed (not those skipped because one upstream failed)."""
    return sorted(task for task, state in _states_of(run).items() if state == "failed")


def _states_of(run) -> dict[str, str]:
    return {ti.task_id: _state(ti.state) for ti in run.get_task_instances()}


def _state(state) -> str:
    return str(getattr(state, "value", state))
