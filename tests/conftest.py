"""Shared fixtures: one real Spark session per test run, isolated FleetWatch homes, PostgreSQL."""

from __future__ import annotations

import os
import uuid

import pytest

from fleetwatch.core.settings import Settings

POSTGRES_ADMIN_URL = os.environ.get("FLEETWATCH_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
# The tests' Spark driver JVMs compile with C1 only: their partitions are small and most of their
# JVMs live for one step, where C2's compiling costs more CPU than it saves (two DAG tests: 49-52
# against 66 CPU-s, benchmarks/README.md#test-suite-and-ci). Results do not depend on it.
TEST_JAVA_OPTIONS = "-XX:TieredStopAtLevel=1"


def pytest_collection_modifyitems(config, items):
    """Order the tests so parallel workers (``make test``) share the slow ones from the start.

    xdist's ``worksteal`` first hands each of its ``n`` workers one contiguous share of this
    list (``remaining // workers left`` items each) and only later steals from a share's tail.
    So each share starts with its round-robin turn of the slow tests and is filled up with fast
    ones. With all slow tests in the first share one worker began them all in a row; measured
    on this 2-core machine, one run each: 974 s with that order, 940 s with this one on 2 workers
    and 912 s on 3 (within the machine's run-to-run noise: the suite is bound by its Spark jobs'
    CPU, not by the schedule).
    """
    workers = max(int(getattr(config, "workerinput", {}).get("workercount", 1)), 1)
    slow = [item for item in items if item.get_closest_marker("slow") is not None]
    fast = [item for item in items if item.get_closest_marker("slow") is None]
    ordered, remaining = [], len(items)
    for k in range(workers):
        size = remaining // (workers - k)
        share = slow[k::workers]
        take = max(size - len(share), 0)
        share, fast = share + fast[:take], fast[take:]
        ordered += share
        remaining -= len(share)
    items[:] = ordered + fast


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    """A real local Spark session shared by the whole run (starting one costs ~5 s)."""
    from fleetwatch.core.spark import get_spark

    home = tmp_path_factory.mktemp("spark-home")
    session = get_spark(Settings(home=home, spark_master="local[2]", spark_shuffle_partitions=2,
                                 spark_driver_java_options=TEST_JAVA_OPTIONS), "fleetwatch-tests")
    yield session
    session.stop()


@pytest.fixture
def settings(tmp_path, monkeypatch) -> Settings:
    """Settings whose home (lake, MLflow, alerts DB) is a fresh temporary folder."""
    for key in list(os.environ):
        if key.startswith("FLEETWATCH_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("FLEETWATCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FLEETWATCH_SPARK_DRIVER_JAVA_OPTIONS", TEST_JAVA_OPTIONS)
    monkeypatch.chdir(tmp_path)
    return Settings()


@pytest.fixture
def pg_admin_url() -> str:
    """A PostgreSQL server URL with a login that may create databases (``FLEETWATCH_TEST_PG``)."""
    return POSTGRES_ADMIN_URL


@pytest.fixture
def pg_url():
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    import sqlalchemy as sa

    name = f"fleetwatch_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:  # pragma: no cover - environment problem
        pytest.fail(f"PostgreSQL at {POSTGRES_ADMIN_URL} is not reachable: {exc}")
    url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    yield url
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()
