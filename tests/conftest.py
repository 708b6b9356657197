"""Shared fixtures: one real Spark session per test run, isolated FleetWatch homes, PostgreSQL."""

from __future__ import annotations

import os
import uuid

import pytest

from fleetwatch.settings import Settings

POSTGRES_ADMIN_URL = os.environ.get("FLEETWATCH_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def pytest_collection_modifyitems(items):
    """Slow tests first, so parallel workers (``make test``) start the longest ones early."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    """A real local Spark session shared by the whole run (starting one costs ~5 s)."""
    from fleetwatch.spark import get_spark

    home = tmp_path_factory.mktemp("spark-home")
    session = get_spark(Settings(home=home, spark_master="local[2]", spark_shuffle_partitions=2), "fleetwatch-tests")
    yield session
    session.stop()


@pytest.fixture
def settings(tmp_path, monkeypatch) -> Settings:
    """Settings whose home (lake, MLflow, alerts DB) is a fresh temporary folder."""
    for key in list(os.environ):
        if key.startswith("FLEETWATCH_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("FLEETWATCH_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return Settings()


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
