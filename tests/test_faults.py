"""Fault injection: each case breaks something the way it broke in use ("nothing lost, nothing let in")
and checks what is on disk and in the tables afterwards, not only an exit code or a message.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
import yaml
from test_alerts_store import incidents
from test_quality import SPEC, _frame
from typer.testing import CliRunner

from fleetwatch.app.cli import app
from fleetwatch.core import alerts_store as alerts_store_module
from fleetwatch.core.alerts_store import AlertsStore, alerts
from fleetwatch.core.errors import AlertsStoreError, SpecError, ValidationFailed
from fleetwatch.core.lake import Lake, write_pandas_partition
from fleetwatch.core.publishing import publish_alerts
from fleetwatch.core.quality import validate_partition
from fleetwatch.core.settings import Settings
from fleetwatch.core.specs import DatasetSpec, MetricSpec, load_spec, write_spec

DAY = dt.date(2026, 1, 3)
NEXT = DAY + dt.timedelta(days=1)
REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _one_line_error(result) -> str:
    """The CLI's error as one line (exit code 2); the console may wrap it, so lines are joined."""
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert text.startswith("error: "), text
    return text


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


# 3. an unreadable Parquet file fails validation; the next day's lookback never reads it ----------------


@pytest.mark.integration
def test_truncated_parquet_file_is_quarantined_and_never_read_downstream(spark, settings):
    from feature_store.offline_store import OfflineStore, day_start
    from feature_store.pipeline import build_features
    from feature_store.views import view_for

    write_spec(settings.specs_dir, SPEC)
    lake = Lake(settings.lake_root)
    raw = Path(write_pandas_partition(lake, _frame(), lake.raw("fleet", DAY)))
    good = (raw / "part-00000.parquet").read_bytes()
    late = _frame(DAY + dt.timedelta(hours=2)).assign(entity_id=lambda f: f["entity_id"] + "b")
    late.to_parquet(raw / "part-00001.parquet", index=False)
    cut = (raw / "part-00001.parquet").read_bytes()
    (raw / "part-00001.parquet").write_bytes(cut[: len(cut) // 2])  # truncated mid-write upstream
    write_pandas_partition(lake, _frame(NEXT), lake.raw("fleet", NEXT))

    with pytest.raises(ValidationFailed) as err:
        validate_partition(spark, settings, "fleet", DAY)

    text = str(err.value)
    assert "\n" not in text and "readable_parquet: file part-00001.parquet is not readable Parquet" in text
    copy = Path(text.rsplit("partition moved to ", 1)[1])
    assert not raw.exists()
    assert (copy / "part-00000.parquet").read_bytes() == good  # nothing lost: both files kept as they were
    assert (copy / "part-00001.parquet").read_bytes() == cut[: len(cut) // 2]
    result = json.loads((Path(lake.partition("validation", "fleet", DAY)) / "result.json").read_text())
    assert result["success"] is False and result["failures"][0]["file"] == "part-00001.parquet"

    assert validate_partition(spark, settings, "fleet", NEXT).startswith("valid")
    view = view_for(SPEC)
    rows = OfflineStore(spark, lake).read_raw_with_lookback(SPEC, view, NEXT).toPandas()
    assert len(rows) == 200 and rows["ts"].min() >= pd.Timestamp(day_start(NEXT)).tz_localize(None)
    build_features(spark, settings, "fleet", NEXT)
    features = pd.read_parquet(lake.features("fleet", view.ref, NEXT))
    assert len(features) == 200 and set(features["entity_id"]) == {"e0", "e1"}


# 4. training stops when labels cannot be read; --no-feedback is the explicit way round --------------------


UNREACHABLE = "postgresql+psycopg://fw:db-secret@127.0.0.1:1/alerts"


def test_feedback_that_cannot_be_read_stops_training_with_one_line(settings, monkeypatch):
    from models.feedback import FeedbackUnavailable, exclude_confirmed_anomalies, labelled_alerts

    monkeypatch.setattr(alerts_store_module.time, "sleep", lambda s: None)
    down = Settings(alerts_db_url=UNREACHABLE)
    with pytest.raises(FeedbackUnavailable) as err:
        labelled_alerts(down, "fleet", False, [DAY])
    text = str(err.value)
    assert "\n" not in text and "db-secret" not in text
    assert text.startswith("the alert labels of fleet could not be read") and "--no-feedback" in text
    with pytest.raises(FeedbackUnavailable):
        exclude_confirmed_anomalies(down, SPEC, object())

    off = Settings(alerts_db_url=UNREACHABLE, train_feedback=False)
    frame = object()
    assert exclude_confirmed_anomalies(off, SPEC, frame) is frame  # the database is not even asked
    assert labelled_alerts(off, "fleet", None, [DAY]).empty


@pytest.mark.integration
def test_train_with_the_alerts_database_down_fails_and_registers_nothing(spark, settings, monkeypatch):
    from feature_store.views import view_for

    monkeypatch.setattr(alerts_store_module.time, "sleep", lambda s: None)
    write_spec(settings.specs_dir, SPEC)
    view = view_for(SPEC)
    lake = Lake(settings.lake_root)
    rows = _frame().assign(**{c: 0.0 for c in view.feature_columns})[["entity_id", "ts", *view.feature_columns]]
    write_pandas_partition(lake, rows, lake.features("fleet", view.ref, DAY))
    monkeypatch.setenv("FLEETWATCH_ALERTS_DB_URL", UNREACHABLE)

    text = _one_line_error(runner.invoke(app, ["train", "--dataset", "fleet", "--date", str(DAY)]))

    assert "alert labels of fleet could not be read" in text and "--no-feedback" in text and "db-secret" not in text
    assert not (settings.home / "mlflow.db").exists() and not (settings.home / "mlartifacts").exists()


def test_train_no_feedback_flag_reaches_training(settings, monkeypatch):
    import models.training

    write_spec(settings.specs_dir, SPEC)
    seen = []
    monkeypatch.setattr(models.training, "train_models", lambda spark, s, ds, day: seen.append(s.train_feedback) or "ok")
    monkeypatch.setattr("fleetwatch.app.cli.get_spark", lambda settings: None)
    for flags in ([], ["--no-feedback"]):
        result = runner.invoke(app, ["train", "--dataset", "fleet", "--date", str(DAY), *flags])
        assert result.exit_code == 0, result.output
    assert seen == [True, False]


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


# 6. dataset names: one check, every command -----------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["publish", "--date", str(DAY)],
        ["validate", "--date", str(DAY)],
        ["features", "--date", str(DAY)],
        ["train", "--date", str(DAY)],
        ["score", "--date", str(DAY)],
        ["drift", "--date", str(DAY)],
        ["night", "--date", str(DAY)],
        ["models", "rollback"],
        ["alerts", "list"],
    ],
)
def test_malformed_or_unknown_dataset_is_refused_everywhere(settings, command):
    write_spec(settings.specs_dir, SPEC)
    escaped = settings.home / "etc"  # where lake/incidents/../../etc leads
    leaked = incidents(dataset="../../etc", day=DAY)
    outside = Path(write_pandas_partition(Lake(str(escaped.parent)), leaked, str(escaped / f"dt={DAY}")))
    before = {p.name: p.read_bytes() for p in outside.iterdir()}

    bad = _one_line_error(runner.invoke(app, [*command, "--dataset", "../../etc"]))
    unknown = _one_line_error(runner.invoke(app, [*command, "--dataset", "nope"]))

    assert "dataset name '../../etc' is malformed" in bad
    if command == ["alerts", "list"]:  # a dataset whose spec is gone may still have alerts: those are known too
        assert "unknown dataset 'nope'" in unknown and "known: fleet" in unknown
    else:
        assert "no dataset spec for 'nope'" in unknown and "known datasets: fleet" in unknown
        assert not (settings.home / "alerts.db").exists()  # nothing was published, not even a table made
    assert {p.name: p.read_bytes() for p in outside.iterdir()} == before


def test_library_refuses_paths_outside_the_lake(settings):
    with pytest.raises(SpecError, match="dataset name '../../etc' is malformed"):
        publish_alerts(settings, "../../etc", DAY)
    with pytest.raises(SpecError, match="malformed"):
        Lake(settings.lake_root).raw("a/b", DAY)
    with pytest.raises(SpecError, match="malformed"):
        load_spec(settings.specs_dir, "../specs/x")


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


# 9. quarantining the same day twice keeps both copies ------------------------------------------------------


@pytest.mark.integration
def test_quarantining_a_day_twice_keeps_every_copy(spark, settings):
    write_spec(settings.specs_dir, SPEC)
    lake = Lake(settings.lake_root)
    copies = []
    for attempt in range(2):
        bad = _frame().drop(columns=["mem"]).assign(cpu=float(attempt + 1))  # a missing column, different data
        path = Path(write_pandas_partition(lake, bad, lake.raw("fleet", DAY)))
        written = (path / "part-00000.parquet").read_bytes()
        with pytest.raises(ValidationFailed) as err:
            validate_partition(spark, settings, "fleet", DAY)
        copy = Path(str(err.value).rsplit("partition moved to ", 1)[1])
        assert (copy / "part-00000.parquet").read_bytes() == written
        copies.append((copy, written))
    kept = sorted(p for p in Path(lake.partition("quarantine", "fleet", DAY)).iterdir())
    assert kept == sorted(c for c, _ in copies) and len(kept) == 2
    assert [(c / "part-00000.parquet").read_bytes() for c, _ in copies] == [w for _, w in copies]


# 10. nulls in metrics: allowed only up to the spec's share ------------------------------------------------


@pytest.mark.integration
def test_nulls_beyond_the_metric_share_fail_validation(spark, settings):
    spec = DatasetSpec(
        name="fleet",
        min_rows=50,
        metrics=[
            MetricSpec(name="cpu", dtype="double", min=0, max=100),
            MetricSpec(name="mem", dtype="long", max_null_share=0.1),
        ],
    )
    write_spec(settings.specs_dir, spec)
    assert load_spec(settings.specs_dir, "fleet") == spec  # the share survives the TOML round trip
    lake = Lake(settings.lake_root)

    def with_nulls(day):
        frame = _frame(day)
        frame["mem"] = frame["mem"].astype("Int64")
        frame.loc[:9, "mem"] = pd.NA  # 10 of 200: 5 %, within mem's 10 %
        return frame

    write_pandas_partition(lake, with_nulls(NEXT), lake.raw("fleet", NEXT))
    assert validate_partition(spark, settings, "fleet", NEXT).startswith("valid")

    frame = with_nulls(DAY)
    frame.loc[[3, 50, 120], "cpu"] = None  # cpu allows none
    write_pandas_partition(lake, frame, lake.raw("fleet", DAY))
    with pytest.raises(ValidationFailed) as err:
        validate_partition(spark, settings, "fleet", DAY)
    assert "expect_column_values_to_not_be_null on cpu: 3 null values, a share of 1.50% where at most 0.00% is allowed" in str(
        err.value
    )
    assert not lake.exists(lake.raw("fleet", DAY)) and lake.exists(lake.raw("fleet", NEXT))


# 11. staging folders a crashed run left behind ----------------------------------------------------------


def test_stale_staging_folders_are_removed_by_the_next_write(settings):
    lake = Lake(settings.lake_root)
    area = Path(lake.zone("raw", "fleet"))
    stale, trash = area / "_staging-dt=2026-01-01-0badc0de", area / "_trash-dt=2026-01-01-0badc0de"
    live = area / "_staging-dt=2026-01-02-11ve11ve"
    for folder in (stale, trash, live):
        folder.mkdir(parents=True)
        (folder / "part-00000.parquet").write_bytes(b"half written")
    two_days_ago = time.time() - 2 * 86_400
    for folder in (stale, trash):
        os.utime(folder, (two_days_ago, two_days_ago))

    write_pandas_partition(lake, _frame(), lake.raw("fleet", DAY))

    assert not stale.exists() and not trash.exists()
    assert live.exists()  # young: it may be a write in progress
    assert sorted(p.name for p in area.iterdir()) == [live.name, f"dt={DAY}"]
    assert len(pd.read_parquet(area / f"dt={DAY}")) == 200


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
