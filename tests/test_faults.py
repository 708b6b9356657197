"""Fault injection: each case breaks something the way it broke in use ("nothing lost, nothing let in")
and checks what is on disk and in the tables afterwards, not only an exit code or a message.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path

import pandas as pd
import pytest
from test_alerts_store import incidents
from test_quality import SPEC, _frame
from typer.testing import CliRunner

from fleetwatch.app.cli import app
from fleetwatch.core import alerts_store as alerts_store_module
from fleetwatch.core.errors import SpecError, ValidationFailed
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
