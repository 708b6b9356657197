"""Alerts store on SQLite and PostgreSQL: partition replacement, labels, SQL, errors, CLI."""

from __future__ import annotations

import datetime as dt
import json
import re
import threading

import pandas as pd
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from fleetwatch.app.cli import app
from fleetwatch.core.alerts_store import ALERT_COLUMNS, AlertsStore, partition_lock_key, redact_url
from fleetwatch.core.errors import AlertsStoreError, PartitionNotFound
from fleetwatch.core.lake import Lake, write_pandas_partition
from fleetwatch.core.publishing import publish_alerts
from fleetwatch.core.specs import DatasetSpec, MetricSpec, write_spec

DAY = dt.date(2026, 1, 2)
NEXT = dt.date(2026, 1, 3)
CONTENT = list(ALERT_COLUMNS)


def incidents(dataset="fleet", day=DAY, entities=("e1", "e2", "e3"), minutes=10) -> pd.DataFrame:
    """One incident per entity on ``day``; entity i starts at hour i and lasts ``minutes``."""
    rows = []
    for i, entity in enumerate(entities):
        start = pd.Timestamp(day, tz="UTC") + pd.Timedelta(hours=i + 1, microseconds=123)
        rows.append(
            {
                "dataset": dataset,
                "entity_id": entity,
                "dt": day,
                "start_ts": start,
                "end_ts": start + pd.Timedelta(minutes=minutes),
                "n_points": minutes + 1,
                "peak_score": 0.9 + i / 100,
                "severity": ("high", "critical", "low")[i % 3],
                "threshold": 0.8,
                "top_metrics": "cpu,mem",
                "contributions": json.dumps(
                    [{"metric": "cpu", "value": 97.5, "baseline": 40.0, "error": 3.1}]
                ),
                "phases": json.dumps([
                    {"start_ts": start.isoformat(), "end_ts": (start + pd.Timedelta(minutes=minutes)).isoformat(),
                     "n_points": minutes + 1, "top_metrics": "cpu",
                     "contributions": [{"metric": "cpu", "value": 97.5, "baseline": 40.0, "error": 3.1}]}
                ]),
                "model_scope": "entity" if i else "fleet",
                "model_name": f"{dataset}-bundle",
                "model_version": "3",
                "feature_view": "basic@v1",
                "run_id": "run-abc",
            }
        )
    return pd.DataFrame(rows)


def content(frame: pd.DataFrame) -> pd.DataFrame:
    """The published columns in a stable order, for comparing input with what is stored."""
    return frame[CONTENT].sort_values(["dataset", "dt", "entity_id"]).reset_index(drop=True)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def store(request, tmp_path):
    """The same behaviour, once on an SQLite file and once on a fresh PostgreSQL database."""
    url = f"sqlite:///{tmp_path / 'db' / 'alerts.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    s = AlertsStore(url)
    yield s
    s.dispose()


def test_publish_stores_one_row_per_incident(store):
    frame = incidents()
    assert store.publish_partition("fleet", DAY, frame) == 3
    stored = store.frame()
    pd.testing.assert_frame_equal(content(stored), content(frame), check_dtype=False)
    assert str(stored["start_ts"].dt.tz) == "UTC"
    assert stored["label"].isna().all() and stored["created_at"].notna().all()
    assert json.loads(stored["contributions"][0])[0]["baseline"] == 40.0


def test_rerun_replaces_the_partition(store):
    store.publish_partition("fleet", DAY, incidents())
    store.publish_partition("fleet", DAY, incidents())
    assert len(store.frame()) == 3
    pd.testing.assert_frame_equal(content(store.frame()), content(incidents()), check_dtype=False)

    store.publish_partition("fleet", DAY, incidents(entities=("e9",)))
    assert store.frame()["entity_id"].tolist() == ["e9"]


def test_other_partitions_untouched(store):
    store.publish_partition("fleet", DAY, incidents())
    store.publish_partition("fleet", NEXT, incidents(day=NEXT))
    store.publish_partition("other", DAY, incidents(dataset="other"))
    before_next, before_other = store.frame("fleet", NEXT), store.frame("other", DAY)

    store.publish_partition("fleet", DAY, incidents(entities=("e1",)))

    assert store.frame("fleet", DAY)["entity_id"].tolist() == ["e1"]
    pd.testing.assert_frame_equal(store.frame("fleet", NEXT), before_next)
    pd.testing.assert_frame_equal(store.frame("other", DAY), before_other)


def test_labels_follow_their_incident_across_a_rerun(store):
    store.publish_partition("fleet", DAY, incidents())
    ids = store.frame().set_index("entity_id")["id"]
    store.label(int(ids["e1"]), True)
    store.label(int(ids["e2"]), False)
    labelled_at = store.frame().set_index("entity_id")["labelled_at"]

    rerun = incidents()
    rerun.loc[rerun["entity_id"] == "e2", "end_ts"] += pd.Timedelta(minutes=1)  # e2 grew: the same incident
    rerun.loc[rerun["entity_id"] == "e3", "start_ts"] += pd.Timedelta(hours=5)  # e3 moved: another incident
    rerun.loc[rerun["entity_id"] == "e3", "end_ts"] += pd.Timedelta(hours=5)
    store.publish_partition("fleet", DAY, rerun)

    after = store.frame().set_index("entity_id")
    assert after.loc[["e1", "e2", "e3"], "label"].tolist() == [True, False, None]
    assert after.loc[["e1", "e2"], "id"].tolist() == ids[["e1", "e2"]].tolist()
    assert after.loc["e3", "id"] not in set(ids)
    assert after.loc["e1", "labelled_at"] == labelled_at["e1"]
    assert after.loc["e2", "labelled_at"] == labelled_at["e2"]
    assert after.loc["e2", "end_ts"] == rerun.set_index("entity_id").loc["e2", "end_ts"]


def test_label_by_sql_shows_in_list_recent(store):
    store.publish_partition("fleet", DAY, incidents())
    store.publish_partition("other", NEXT, incidents(dataset="other", day=NEXT, entities=("x1",)))
    target = int(store.frame("fleet").set_index("entity_id").loc["e2", "id"])

    assert store.query(f"UPDATE alerts SET label = true WHERE id = {target}") == (["rows_affected"], [(1,)])

    recent = store.list_recent(limit=2, dataset="fleet")
    assert recent["entity_id"].tolist() == ["e3", "e2"]  # newest first, limited, one dataset
    assert recent["label"].tolist() == [None, True]
    assert store.list_recent()["entity_id"].tolist() == ["x1", "e3", "e2", "e1"]


def test_unknown_alert_id(store):
    store.publish_partition("fleet", DAY, incidents())
    with pytest.raises(AlertsStoreError, match="no alert with id 9999"):
        store.label(9999, True)
    assert store.frame()["label"].isna().all()


def test_query_returns_rows_and_reports_errors(store):
    store.publish_partition("fleet", DAY, incidents())
    columns, rows = store.query("SELECT entity_id FROM alerts WHERE top_metrics LIKE '%mem%' ORDER BY entity_id")
    assert columns == ["entity_id"] and rows == [("e1",), ("e2",), ("e3",)]
    with pytest.raises(AlertsStoreError, match="SQL failed: .*no_such_column"):
        store.query("SELECT no_such_column FROM alerts")


@pytest.mark.parametrize(
    "spoil, message",
    [
        (lambda f: f.drop(columns=["severity", "threshold"]), "missing columns severity, threshold"),
        (lambda f: f.assign(severity=["high", "extreme", "low"]), "column severity has extreme"),
        (lambda f: f.assign(dt=NEXT), "column dt has 2026-01-03"),
        (lambda f: f.assign(dataset="other"), "column dataset has other"),
    ],
)
def test_bad_frame_writes_nothing(store, spoil, message):
    store.publish_partition("fleet", DAY, incidents())
    before = store.frame()
    with pytest.raises(AlertsStoreError, match=f"alerts for fleet 2026-01-02: {message}"):
        store.publish_partition("fleet", DAY, spoil(incidents(entities=("n1", "n2", "n3"))))
    pd.testing.assert_frame_equal(store.frame(), before)


def test_failure_inside_the_transaction_keeps_old_rows(store):
    store.publish_partition("fleet", DAY, incidents())
    before = store.frame()
    broken = incidents(entities=("n1", "n2", "n3"))
    broken.loc[2, "model_name"] = None  # the delete has run when this insert fails
    with pytest.raises(AlertsStoreError, match="publishing alerts of fleet 2026-01-02: .*model_name"):
        store.publish_partition("fleet", DAY, broken)
    pd.testing.assert_frame_equal(store.frame(), before)


def test_empty_frame_clears_the_partition(store):
    store.publish_partition("fleet", DAY, incidents())
    assert store.publish_partition("fleet", DAY, incidents().iloc[:0]) == 0
    assert store.frame().empty


def test_publish_drift_replaces_its_partition(store):
    def drift(day, features):
        return pd.DataFrame(
            {
                "dataset": "fleet",
                "dt": day,
                "entity_id": "e1",
                "feature": features,
                "psi": [0.1 * (i + 1) for i in range(len(features))],
                "drifted": [i > 1 for i in range(len(features))],
                "model_version": "3",
            }
        )

    assert store.publish_drift("fleet", DAY, drift(DAY, ["a", "b", "c"])) == 3
    store.publish_drift("fleet", NEXT, drift(NEXT, ["a"]))
    assert store.publish_drift("fleet", DAY, drift(DAY, ["a", "z"])) == 2
    _, rows = store.query("SELECT feature, drifted FROM drift ORDER BY dt, feature")
    assert [(f, bool(d)) for f, d in rows] == [("a", False), ("z", False), ("a", False)]
    with pytest.raises(AlertsStoreError, match="drift for fleet 2026-01-02: missing columns psi"):
        store.publish_drift("fleet", DAY, drift(DAY, ["q"]).drop(columns="psi"))


def test_create_is_idempotent_and_indexes_exist(store):
    store.create()
    store.create()
    inspector = sa.inspect(store.engine)
    assert {"alerts", "drift"} <= set(inspector.get_table_names())
    indexed = {tuple(ix["column_names"]) for ix in inspector.get_indexes("alerts")}
    assert {("dataset", "dt"), ("dataset", "entity_id", "start_ts")} <= indexed


def test_an_incident_reads_hour_by_hour_with_sql(store):
    frame = incidents(minutes=150)
    start = frame["start_ts"].iloc[1]
    frame.loc[1, "phases"] = json.dumps([
        {"start_ts": (start + pd.Timedelta(hours=h)).isoformat(),
         "end_ts": (start + pd.Timedelta(minutes=60 * h + 59)).isoformat(),
         "n_points": 60, "top_metrics": top, "contributions": []}
        for h, top in enumerate(["disk_w,io", "disk_w,cpu", "cpu,load_1"])
    ])
    store.publish_partition("fleet", DAY, frame)
    if store.engine.dialect.name == "postgresql":  # the README's queries, one per backend
        sql = ("select p->>'top_metrics' from alerts a, jsonb_array_elements(a.phases::jsonb) p "
               "where a.entity_id = 'e2' order by p->>'start_ts'")
    else:
        sql = ("select json_extract(p.value, '$.top_metrics') from alerts a, json_each(a.phases) p "
               "where a.entity_id = 'e2' order by json_extract(p.value, '$.start_ts')")
    _, rows = store.query(sql)
    assert [r[0] for r in rows] == ["disk_w,io", "disk_w,cpu", "cpu,load_1"]


def test_a_table_made_before_phases_gains_the_column_and_keeps_its_rows(store):
    store.publish_partition("fleet", DAY, incidents())
    labelled = int(store.frame()["id"].iloc[0])
    store.label(labelled, True)
    with store.engine.begin() as conn:  # the alerts table as it was before phases were kept
        conn.execute(sa.text("ALTER TABLE alerts DROP COLUMN phases"))
    assert "phases" not in {c["name"] for c in sa.inspect(store.engine).get_columns("alerts")}

    reopened = AlertsStore(store.url)
    old = reopened.frame()  # first use adds the column, empty for the rows already there
    assert len(old) == 3 and old["phases"].isna().all()
    assert old.set_index("id").loc[labelled, "label"] == True  # noqa: E712
    # incident partitions written before phases (no such column) still publish
    reopened.publish_partition("fleet", NEXT, incidents(day=NEXT).drop(columns="phases"))
    new = reopened.frame("fleet", NEXT)
    assert len(new) == 3 and new["phases"].isna().all()
    reopened.publish_partition("fleet", NEXT, incidents(day=NEXT))
    assert json.loads(reopened.frame("fleet", NEXT)["phases"][0])[0]["top_metrics"] == "cpu"
    assert len(reopened.frame("fleet", DAY)) == 3
    reopened.dispose()


@pytest.mark.integration
def test_publishers_of_one_partition_wait_for_each_other_on_postgresql(pg_url):
    store, other = AlertsStore(pg_url), sa.create_engine(pg_url)
    store.create()
    with other.begin() as conn:  # another publisher of fleet/DAY is mid-transaction
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(partition_lock_key("alerts", "fleet", DAY))))
        worker = threading.Thread(target=store.publish_partition, args=("fleet", DAY, incidents()))
        worker.start()
        worker.join(1.0)
        assert worker.is_alive()
        store.publish_partition("fleet", NEXT, incidents(day=NEXT))  # another partition does not wait
    worker.join(10.0)
    assert not worker.is_alive() and len(store.frame("fleet", DAY)) == 3
    store.dispose()
    other.dispose()


def test_unreachable_database_names_url_without_password():
    store = AlertsStore("postgresql+psycopg://user:secret@127.0.0.1:1/x")
    with pytest.raises(AlertsStoreError) as err:
        store.list_recent()
    message = str(err.value)
    assert "127.0.0.1:1" in message and "secret" not in message
    assert "FLEETWATCH_ALERTS_DB_URL" in message and "\n" not in message


def test_redact_url():
    assert redact_url("postgresql+psycopg://u:pw@host/db") == "postgresql+psycopg://u:***@host/db"
    assert redact_url("sqlite:////tmp/a.db") == "sqlite:////tmp/a.db"


def test_default_sqlite_store_creates_its_folder(settings):
    assert not settings.home.exists()
    AlertsStore(settings.alerts_db_url).create()
    assert (settings.home / "alerts.db").is_file()


def _write_incidents(settings, frame, day=DAY):
    write_spec(settings.specs_dir, DatasetSpec(name="fleet", metrics=[MetricSpec(name="cpu")]))
    lake = Lake(settings.lake_root)
    write_pandas_partition(lake, frame, lake.partition("incidents", "fleet", day))


def test_publish_alerts_from_the_lake(settings):
    with pytest.raises(PartitionNotFound, match="incidents partition of fleet for 2026-01-02"):
        publish_alerts(settings, "fleet", DAY)

    _write_incidents(settings, incidents())
    assert publish_alerts(settings, "fleet", DAY) == 3
    stored = AlertsStore(settings.alerts_db_url).frame()
    pd.testing.assert_frame_equal(content(stored), content(incidents()), check_dtype=False)

    _write_incidents(settings, incidents().iloc[:0])
    assert publish_alerts(settings, "fleet", DAY) == 0
    assert AlertsStore(settings.alerts_db_url).frame().empty


@pytest.mark.integration
@pytest.mark.slow
def test_publish_alerts_through_spark(settings, spark):
    _write_incidents(settings, incidents())
    settings = settings.model_copy(update={"publish_batch_rows": 2})  # two batches streamed from Spark
    assert publish_alerts(settings, "fleet", DAY, spark=spark) == 3
    stored = AlertsStore(settings.alerts_db_url).frame()
    pd.testing.assert_frame_equal(content(stored), content(incidents()), check_dtype=False)


def table_rows(output: str) -> list[list[str]]:
    """The cells of a table the CLI printed, row by row (header first), whatever glyphs draw its borders."""
    rows = []
    for line in output.splitlines():
        if not re.sub(r"[\u2500-\u257f|+=\s-]", "", line):
            continue  # a border
        rows.append([cell.strip() for cell in re.split(r"[\u2500-\u257f|]", line)[1:-1]])
    return rows


def test_cli_list_label_and_sql(settings, monkeypatch):
    from fleetwatch.app import cli

    # the CLI's console fixes its width when COLUMNS is set at import (pytest-xdist workers set 80)
    monkeypatch.setattr(cli.console, "_width", 250)
    write_spec(settings.specs_dir, DatasetSpec(name="fleet", metrics=[MetricSpec(name="cpu")]))  # --dataset must be known
    store = AlertsStore(settings.alerts_db_url)
    store.publish_partition("fleet", DAY, incidents())
    target = int(store.frame().set_index("entity_id").loc["e2", "id"])
    runner = CliRunner()

    listed = runner.invoke(app, ["alerts", "list", "--dataset", "fleet"])
    assert listed.exit_code == 0, listed.output
    assert all(e in listed.output for e in ("e1", "e2", "e3")) and "critical" in listed.output

    labelled = runner.invoke(app, ["alerts", "label", str(target), "true"])
    assert labelled.exit_code == 0, labelled.output
    assert store.frame()["label"].tolist() == [None, True, None]

    missing = runner.invoke(app, ["alerts", "label", "4242", "false"])
    assert missing.exit_code == 2 and "no alert with id 4242" in missing.output

    shown = runner.invoke(app, ["alerts", "show", str(target)])
    assert shown.exit_code == 0, shown.output
    assert f"alert {target}: fleet e2" in shown.output and "critical" in shown.output and ", true" in shown.output
    assert "97.5" in shown.output and "2026-01-02T02:00:00.000123+00:00" in shown.output  # ranking, then its hour
    unknown = runner.invoke(app, ["alerts", "show", "4242"])
    assert unknown.exit_code == 2 and "no alert with id 4242" in unknown.output

    counted = runner.invoke(app, ["sql", "select count(*) as n from alerts where label"])
    assert counted.exit_code == 0, counted.output
    assert table_rows(counted.output) == [["n"], ["1"]]  # the column, then one row: one alert labelled true

    total = runner.invoke(app, ["sql", "select count(*) as n, count(label) as labelled from alerts"])
    assert total.exit_code == 0, total.output
    assert table_rows(total.output) == [["n", "labelled"], ["3", "1"]]

    refused = runner.invoke(app, ["sql", "update alerts set label = false"])  # read-only: labels go through `alerts label`
    assert refused.exit_code == 2 and "read-only" in refused.output
    assert store.frame()["label"].tolist() == [None, True, None]
