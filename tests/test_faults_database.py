"""Fault injection on the alerts database and secrets: read-only SQL, roles, stable alert ids,
concurrent first publishes, masked passwords and bounded retries; what is in the tables afterwards."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import threading
import uuid
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
import yaml
from test_alerts_store import incidents
from test_faults import DAY, REPO, _one_line_error, runner

from fleetwatch.app.cli import app
from fleetwatch.core import alerts_store as alerts_store_module
from fleetwatch.core.alerts_store import AlertsStore, alerts
from fleetwatch.core.errors import AlertsStoreError
from fleetwatch.core.settings import Settings


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def db_url(request, settings, monkeypatch):
    """The alerts database the CLI uses: the home's SQLite file, or a fresh PostgreSQL database."""
    url = settings.alerts_db_url if request.param == "sqlite" else request.getfixturevalue("pg_url")
    monkeypatch.setenv("FLEETWATCH_ALERTS_DB_URL", url)
    return url


# 1. `fleetwatch sql` is read-only by construction, one statement per call ---------------------------


@pytest.mark.parametrize(
    "statement, says",
    [
        ("select count(*) from alerts; drop table alerts", "one statement per call"),
        ("drop table alerts", "SQL failed"),
        ("update alerts set label = true", "SQL failed"),
        ("delete from alerts", "SQL failed"),
    ],
)
def test_sql_cannot_change_the_alerts_database(db_url, statement, says):
    store = AlertsStore(db_url)
    store.publish_partition("fleet", DAY, incidents(day=DAY))
    before = store.frame()

    text = _one_line_error(runner.invoke(app, ["sql", statement]))

    assert says in text and "fleetwatch alerts label" in text or "one statement" in text
    assert {"alerts", "drift"} <= set(sa.inspect(store.engine).get_table_names())
    pd.testing.assert_frame_equal(store.frame(), before)  # every row, every label as it was
    counted = runner.invoke(app, ["sql", "select count(*) as n from alerts where label is null"])
    assert counted.exit_code == 0 and re.search(r"\b3\b", counted.output)
    store.dispose()


# 2. `fleetwatch db init`: a writer that owns the tables, an analyst that only reads ------------------


@pytest.fixture
def roles(pg_url, monkeypatch):
    """Role names unique to this test (roles are cluster-wide), dropped afterwards."""
    suffix = uuid.uuid4().hex[:8]
    writer, analyst = f"fw_writer_{suffix}", f"fw_analyst_{suffix}"
    monkeypatch.setenv("FLEETWATCH_ALERTS_WRITER_ROLE", writer)
    monkeypatch.setenv("FLEETWATCH_ALERTS_ANALYST_ROLE", analyst)
    yield writer, analyst
    admin = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        for role in (writer, analyst):
            if conn.execute(sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}).scalar():
                conn.exec_driver_sql(f'DROP OWNED BY "{role}" CASCADE')
                conn.exec_driver_sql(f'DROP ROLE "{role}"')
    admin.dispose()


@pytest.mark.integration
def test_db_init_makes_an_owner_and_a_select_only_analyst(settings, pg_url, roles, monkeypatch):
    writer, analyst = roles
    monkeypatch.setenv("FLEETWATCH_ALERTS_DB_URL", pg_url)
    monkeypatch.setenv("ALERTS_ANALYST_PASSWORD", "analyst-pw-not-printed")
    first = runner.invoke(app, ["db", "init"])
    assert first.exit_code == 0, first.output
    again = runner.invoke(app, ["db", "init"])  # idempotent
    assert again.exit_code == 0, again.output
    out = " ".join(first.output.split())
    assert writer in out and analyst in out and "analyst-pw-not-printed" not in out

    AlertsStore(pg_url).publish_partition("fleet", DAY, incidents(day=DAY))
    admin = sa.create_engine(pg_url)
    with admin.connect() as conn:
        owners = dict(conn.execute(sa.text("SELECT tablename, tableowner FROM pg_tables WHERE schemaname = 'public'")).all())
    assert owners == {"alerts": writer, "alert_nights": writer, "drift": writer}
    with admin.begin() as conn:  # a table the writer makes later is readable by the analyst too
        conn.exec_driver_sql(f'SET LOCAL ROLE "{writer}"')
        conn.exec_driver_sql("CREATE TABLE later (x int)")
    host = pg_url.rsplit("@", 1)[1]
    as_analyst = sa.create_engine(f"postgresql+psycopg://{analyst}@{host}")
    with as_analyst.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM alerts").scalar() == 3
        assert conn.exec_driver_sql("SELECT count(*) FROM later").scalar() == 0
    for statement in ("UPDATE alerts SET label = true", "DELETE FROM drift", "DROP TABLE alerts", "CREATE TABLE t (x int)"):
        with as_analyst.connect() as conn, pytest.raises(sa.exc.ProgrammingError, match="permission denied|must be owner"):
            conn.exec_driver_sql(statement)
    as_analyst.dispose()
    with admin.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM alerts WHERE label IS NULL").scalar() == 3
    admin.dispose()
    # `fleetwatch sql` takes the analyst role where there is one
    who = runner.invoke(app, ["sql", "select current_user as who"])
    assert who.exit_code == 0 and analyst in who.output


def test_compose_stack_commits_no_password():
    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    text = (REPO / "docker" / "compose.yaml").read_text()
    passwords = re.findall(r"postgresql[+\w]*://\w+:(.{2})", text)
    assert len(passwords) >= 4 and set(passwords) == {"${"}, passwords  # every URL's password from docker/.env
    assert "POSTGRES_PASSWORD: ${POSTGRES_PASSWORD:?" in text
    init = (REPO / "docker" / "postgres-init" / "10-databases.sh").read_text()
    for database, user in (("airflow", "airflow"), ("mlflow", "mlflow"), ("alerts", "fleetwatch_writer")):
        assert re.search(rf"^create {database} {user} ", init, re.M)
        assert f"/{database}" in text
    assert compose["services"]["db-init"]["command"] == ["fleetwatch", "db", "init"]
    example = (REPO / "docker" / ".env.example").read_text()
    needed = set(re.findall(r"\$\{(\w+):\?", text))
    assert needed <= set(re.findall(r"^(\w+)=", example, re.M))
    ignored = subprocess.run(["git", "check-ignore", "-q", "docker/.env"], cwd=REPO)
    assert ignored.returncode == 0


# 5. alert ids are stable while the incident is the same; never reused for another -----------------------


def _sqlite_table_without_autoincrement(url: str) -> None:
    """The alerts table as releases before this one made it on SQLite (ids could be handed out twice)."""
    old = alerts.to_metadata(sa.MetaData())
    old.dialect_options["sqlite"]["autoincrement"] = False
    engine = sa.create_engine(url)
    old.create(engine)
    engine.dispose()


@pytest.mark.parametrize("older_table", [False, True])
def test_republish_keeps_ids_of_the_same_incidents_and_never_reuses_one(db_url, older_table):
    if older_table:
        if not db_url.startswith("sqlite"):
            pytest.skip("only SQLite tables were made without AUTOINCREMENT")
        Path(db_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        _sqlite_table_without_autoincrement(db_url)
    store = AlertsStore(db_url)
    store.publish_partition("fleet", DAY, incidents(day=DAY))
    first = store.frame().set_index("entity_id")
    store.label(int(first.loc["e1", "id"]), True)
    store.label(int(first.loc["e3", "id"]), False)

    rerun = incidents(day=DAY, entities=("e1", "e2", "e4"))  # e3's incident (the newest id) is gone, e4's is new
    rerun.loc[0, "start_ts"] += pd.Timedelta(minutes=3)  # e1 rescored: overlaps what it was
    rerun.loc[1, "end_ts"] += pd.Timedelta(minutes=30)
    store.publish_partition("fleet", DAY, rerun)
    store.publish_partition("fleet", DAY, rerun)  # and once more, unchanged

    after = store.frame().set_index("entity_id")
    assert after.loc["e1", "id"] == first.loc["e1", "id"] and after.loc["e1", "label"] == True  # noqa: E712
    assert after.loc["e2", "id"] == first.loc["e2", "id"]
    assert after.loc["e1", "start_ts"] == rerun.loc[0, "start_ts"]  # the row holds the rerun's values
    assert after.loc["e4", "id"] not in set(first["id"])  # not e3's old id: its label must not land on e4
    assert pd.isna(after.loc["e4", "label"]) and "e3" not in after.index
    assert sorted(after["id"]) == sorted(set(after["id"]))
    if db_url.startswith("sqlite"):
        with store.engine.connect() as conn:
            assert "AUTOINCREMENT" in conn.exec_driver_sql("SELECT sql FROM sqlite_master WHERE name = 'alerts'").scalar()
    store.dispose()


# 7. concurrent first publishes on a fresh PostgreSQL ---------------------------------------------------


@pytest.mark.integration
def test_four_first_publishes_at_once_create_the_tables_once(pg_url):
    days = [DAY + dt.timedelta(days=i) for i in range(4)]
    start, errors = threading.Barrier(4), []

    def publish(day):
        store = AlertsStore(pg_url)
        try:
            start.wait()
            store.publish_partition("fleet", day, incidents(day=day))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)
        finally:
            store.dispose()

    workers = [threading.Thread(target=publish, args=(d,)) for d in days]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert errors == []
    stored = AlertsStore(pg_url)
    assert stored.frame().groupby("dt").size().to_dict() == {d: 3 for d in days}
    stored.dispose()


# 12. passwords never in a log line ---------------------------------------------------------------------------


def test_passwords_are_masked_in_settings_and_spark_submit_logs(settings, monkeypatch, caplog):
    from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
    from airflow.sdk.log import redact

    from fleetwatch.app.spark_operator import SparkJobOperator

    url = "postgresql+psycopg://fw:yarn-s3cret@db:5432/alerts"
    monkeypatch.setenv("FLEETWATCH_ALERTS_DB_URL", url)
    shown = Settings()
    assert "yarn-s3cret" not in repr(shown) and "yarn-s3cret" not in str(shown) and "fw:***@db" in repr(shown)
    assert shown.alerts_db_url == url  # only what is shown is masked

    logged = []

    def submit(self, context):  # what the Spark hook logs on YARN: the environment as --conf
        env = " ".join(f"--conf spark.yarn.appMasterEnv.{k}={v}" for k, v in self.env_vars.items())
        logged.append(redact(f"Spark-Submit cmd: spark-submit --master yarn {env} {self.application}"))

    monkeypatch.setattr(SparkSubmitOperator, "execute", submit)
    SparkJobOperator(task_id="score", job="score_partition", dataset="fleet", settings=shown).execute({})
    assert "FLEETWATCH_ALERTS_DB_URL=postgresql+psycopg://fw:***@db:5432/alerts" in logged[0]
    assert "yarn-s3cret" not in logged[0]


# connection retries ------------------------------------------------------------------------------------------------


def test_a_database_that_is_down_gets_bounded_retries_then_one_line(monkeypatch):
    waits = []
    monkeypatch.setattr(alerts_store_module.time, "sleep", waits.append)
    store = AlertsStore("postgresql+psycopg://fw:retry-secret@127.0.0.1:1/alerts", connect_attempts=4, connect_backoff_s=0.25)
    with pytest.raises(AlertsStoreError) as err:
        store.frame()
    text = str(err.value)
    assert waits == [0.25, 0.5, 1.0]
    assert "\n" not in text and "retry-secret" not in text
    assert text.startswith("cannot reach the alerts database at postgresql+psycopg://fw:***@127.0.0.1:1/alerts after 4 attempts")
