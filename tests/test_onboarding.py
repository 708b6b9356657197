"""A team's own data: spec inference and its refusals, `ingest files` (idempotent, bad files, a dt=
lake in place), labels, and one slow run from CSV export to backtest report."""

from __future__ import annotations

import datetime as dt
import json
import os
import tomllib

import numpy as np
import pandas as pd
import pytest
from onboarding_data import ANOMALIES, ROWS_PER_DAY, START, labels_frame, series, write_csvs, write_minute_csv

from fleetwatch.core.datasets.inference import infer_spec
from fleetwatch.core.datasets.labels import read_labels
from fleetwatch.core.errors import FleetWatchError, SpecError
from fleetwatch.core.lake import Lake
from fleetwatch.core.specs import DatasetSpec, MetricSpec, load_spec

# -- inference rules (pandas only) -------------------------------------------------------------


def _sample(step_s=300, entities=("a", "b"), rows=576, **extra) -> pd.DataFrame:
    frames = []
    for i, e in enumerate(entities):
        step = step_s[i] if isinstance(step_s, tuple) else step_s
        ts = pd.Timestamp("2026-01-01") + pd.to_timedelta(np.arange(rows) * step, unit="s")
        frames.append(pd.DataFrame({
            "host": e, "time": ts.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "cpu_util": [f"{v:.2f}" for v in 50 + 10 * np.sin(np.arange(rows) / 20)],
            "errors": [str(v) for v in np.arange(rows) % 7], "temp": [f"{v:.1f}" for v in -5 + np.arange(rows) * 0.01],
            "region": "eu", "_file": f"file:///x/{e}.csv", **extra,
        }))
    return pd.concat(frames, ignore_index=True)


def test_inference_finds_entity_timestamp_metrics_dtypes_ranges_and_interval():
    got = infer_spec("servers", _sample())
    s = got.spec
    assert (s.entity_column, s.timestamp_column, s.sampling_seconds, s.entity_from) == ("host", "time", 300, "column")
    assert {m.name: m.dtype for m in s.metrics} == {"cpu_util": "double", "errors": "long", "temp": "double"}
    cpu, errors, temp = s.metrics
    assert (cpu.min, cpu.max) == (0.0, 100.0)  # a percentage by name and values
    assert (errors.min, errors.max) == (0.0, float("inf"))  # no upper bound: spikes must not be quarantined
    assert temp.min == float("-inf")
    assert "min -5, max 0.8 seen" in got.metric_evidence["temp"] and "nulls 0.0%" in got.metric_evidence["temp"]
    assert "rows per entity per day: median 288" in got.evidence["sampling_seconds"]
    assert any("region" in n for n in got.notes)


def test_inference_takes_the_entity_from_file_names_when_no_column_names_it():
    sample = _sample().drop(columns=["host", "region"])
    got = infer_spec("servers", sample, files_are_entities=True)
    assert got.spec.entity_from == "file_name" and got.spec.entity_column == "entity_id"
    assert sorted(got.parsed["entity"].unique()) == ["a", "b"]


@pytest.mark.parametrize(
    "sample, kwargs, message",
    [
        (_sample().drop(columns=["time"]), {}, r"^no timestamp column among .*: pass --timestamp-column NAME$"),
        (_sample()[["host", "time", "region", "_file"]], {}, r"^no numeric column .* pass --metrics"),
        (_sample(step_s=(60, 300)), {}, r"^mixed sampling: entities report every 60 s \(1 entity\), 300 s \(1 entity\): "
         r"pass --sampling-seconds"),
        (_sample(), {"timestamp_column": "region"}, r"^--timestamp-column 'region' does not hold timestamps"),
        (_sample(), {"entity_column": "nope"}, r"^--entity-column 'nope': no such column"),
        (_sample().assign(node=lambda f: f["host"]), {}, r"several columns could be the entity \(host, region, node\): "
         r"pass --entity-column NAME"),
    ],
)
def test_inference_refuses_in_one_line_naming_the_option(sample, kwargs, message):
    with pytest.raises(SpecError, match=message) as err:
        infer_spec("servers", sample, **kwargs)
    assert "\n" not in str(err.value)


def test_inference_reads_the_interval_whatever_unit_the_timestamps_were_read_in():
    sample = _sample()
    sample["time"] = pd.to_datetime(sample["time"], utc=True).dt.as_unit("us")  # as Parquet gives them
    assert infer_spec("servers", sample).spec.sampling_seconds == 300


def test_an_option_settles_what_the_sample_cannot():
    got = infer_spec("servers", _sample(step_s=(60, 300)), sampling_seconds=60)
    assert got.spec.sampling_seconds == 60 and got.evidence["sampling_seconds"].startswith("given")
    assert infer_spec("servers", _sample(), metrics=["errors"]).spec.metric_names == ["errors"]


def test_spec_keeps_raw_path_and_entity_from_in_toml():
    spec = DatasetSpec(name="x", metrics=[MetricSpec(name="m")], raw_path="s3a://b/lake/x", entity_from="file_name")
    assert DatasetSpec.model_validate(tomllib.loads(spec.to_toml())) == spec
    assert "raw_path" not in DatasetSpec(name="x", metrics=[MetricSpec(name="m")]).to_toml()


# -- labels ------------------------------------------------------------------------------------


def test_labels_are_read_and_checked(tmp_path):
    spec = DatasetSpec(name="shop", metrics=[MetricSpec(name="cpu_pct"), MetricSpec(name="mem_mb")])
    path = tmp_path / "labels.csv"
    labels_frame().assign(metrics=["cpu_pct", "mem_mb; cpu_pct"]).to_csv(path, index=False)
    events = read_labels(path, spec, {"web-01", "db-01"})
    assert list(events["metrics"]) == ["cpu_pct", "mem_mb,cpu_pct"] and str(events["start_ts"].dt.tz) == "UTC"
    pd.DataFrame({"entity_id": ["web-01"], "start": ["2026-03-02 10:00"], "end": ["soon"]}).to_csv(path, index=False)
    with pytest.raises(FleetWatchError, match=r"labels.csv line 2: column 'end' value 'soon' is not a timestamp"):
        read_labels(path, spec)
    labels_frame().assign(metrics="disk").to_csv(path, index=False)
    with pytest.raises(FleetWatchError, match=r"line 2: metric 'disk' is not one of the spec's \(cpu_pct, mem_mb\)"):
        read_labels(path, spec)
    labels_frame().to_csv(path, index=False)
    with pytest.raises(FleetWatchError, match=r"line 3: entity 'db-01' has no rows in dataset shop"):
        read_labels(path, spec, {"web-01"})


def test_evaluate_routes_a_dataset_name_to_the_labelled_backtest(settings, tmp_path):
    from typer.testing import CliRunner

    from fleetwatch.app.cli import app

    labels = tmp_path / "labels.csv"
    labels_frame().to_csv(labels, index=False)
    result = CliRunner().invoke(app, ["evaluate", "shop", "--labels", str(labels), "--train-days", "2"])
    assert result.exit_code == 2 and "no dataset spec for 'shop'" in result.output
    result = CliRunner().invoke(app, ["evaluate", "smd", "--help"])
    assert result.exit_code == 0 and "--data" in result.output


# -- Spark: init, ingest -----------------------------------------------------------------------


@pytest.fixture
def export(tmp_path):
    return tmp_path / "export", write_csvs(tmp_path / "export", days=3)


def test_init_writes_a_commented_spec_and_ingest_is_idempotent(spark, settings, export):
    from fleetwatch.core.datasets.dataset_init import init_dataset
    from fleetwatch.core.datasets.files import ingest_files

    folder, _ = export
    summary = init_dataset(settings, "shop", [str(folder)], spark=spark)
    text = (settings.specs_dir / "shop.toml").read_text()
    spec = load_spec(settings.specs_dir, "shop")
    assert summary["entity_from"] == "file_name" and spec.sampling_seconds == 300 and spec.timestamp_column == "timestamp"
    assert spec.metric_names == ["cpu_pct", "mem_mb", "requests"]
    assert "sampling_seconds = 300  # median step 300 s on 3 entities; 1 gap(s)" in text
    assert 'name = "cpu_pct"  # nulls 0.0%; min ' in text and "one entity per file" in text
    with pytest.raises(SpecError, match="exists: .* pass --force"):
        init_dataset(settings, "shop", [str(folder)], spark=spark)

    lake = Lake(settings.lake_root)
    first = ingest_files(settings, "shop", [str(folder)], spark=spark)
    assert first["partitions"] == 3 and first["entities"] == 3 and not first["rows_outside_spec"]
    days = lake.days(lake.raw("shop"))
    assert days == [START.date() + dt.timedelta(days=i) for i in range(3)]
    before = pd.concat([pd.read_parquet(lake.raw("shop", d)) for d in days], ignore_index=True)
    expected = sum(len(f[f["ts"] < START + pd.Timedelta(days=3)]) for f in series(3).values())
    assert len(before) == expected and set(before["entity_id"]) == {"web-01", "web-02", "db-01"}
    assert list(before.columns) == spec.columns

    again = ingest_files(settings, "shop", [str(folder)], spark=spark)
    assert again["merged_into_existing"] == [d.isoformat() for d in days]
    after = pd.concat([pd.read_parquet(lake.raw("shop", d)) for d in days], ignore_index=True)
    pd.testing.assert_frame_equal(before, after)


def test_a_bad_file_is_one_line_and_writes_nothing(spark, settings, export):
    from fleetwatch.core.datasets.dataset_init import init_dataset
    from fleetwatch.core.datasets.files import ingest_files

    folder, paths = export
    init_dataset(settings, "shop", [str(folder)], spark=spark)
    lines = paths[1].read_text().splitlines()
    lines[41] = lines[41].replace(lines[41].split(",")[2], "n/a", 1)
    paths[1].write_text("\n".join(lines) + "\n")
    with pytest.raises(FleetWatchError) as err:
        ingest_files(settings, "shop", [str(folder)], spark=spark)
    assert str(err.value).startswith(f"{paths[1]} line 42: column 'mem_mb' value 'n/a' is not a number; nothing was ingested")
    assert not Lake(settings.lake_root).days(Lake(settings.lake_root).raw("shop"))
    paths[1].write_text("timestamp,cpu_pct\n2026-03-01 00:00:00,1.0\n")
    with pytest.raises(FleetWatchError, match=rf"^{paths[1]}: no column 'mem_mb' \(rule: every file holds the spec's"):
        ingest_files(settings, "shop", [str(folder)], spark=spark)


def _break(kind: str, path) -> None:
    """Make ``path`` (a CSV export of one entity) bad in one way, at its line 42 where a row is meant."""
    lines = path.read_text().splitlines()
    if kind == "timestamp":
        lines[41] = "yesterday," + lines[41].split(",", 1)[1]
    elif kind == "number":
        cells = lines[41].split(",")
        lines[41] = ",".join([*cells[:2], "n/a", *cells[3:]])
    elif kind == "header only":
        lines = lines[:1]
    elif kind == "no entity column":
        lines = [",".join(line.split(",")[1:]) for line in lines]  # the files with a host column lose it
    path.write_text("\n".join(lines) + "\n" if kind != "zero bytes" else "")


BAD_FILES = {  # kind -> (rule ingest files names, rule dataset init names), after "<file>..."
    "timestamp": (" line 42: column 'timestamp' value 'yesterday' is empty or not a timestamp (ISO 8601",
                  " line 42: column 'timestamp' value 'yesterday' is not a timestamp (ISO 8601"),
    "number": (" line 42: column 'mem_mb' value 'n/a' is not a number; nothing was ingested into shop",
               " line 42: column 'mem_mb' value 'n/a' is not a number; fix the file"),
    "no entity column": (": no column 'host' (rule: every file holds the spec's columns", ) * 2,
    "header only": (" holds only its header line (rule: a header line, then rows)", ) * 2,
    "zero bytes": (" is empty (rule: a header line, then rows)", ) * 2,
}


@pytest.fixture(params=sorted(BAD_FILES))
def bad_file(request, tmp_path):
    """An export folder (with a host column when the bad kind is its absence), its bad file and the kind."""
    kind = request.param
    folder = tmp_path / "export"
    paths = write_csvs(folder, days=2)
    if kind == "no entity column":
        for p in paths:
            frame = pd.read_csv(p, dtype=str)
            frame.insert(0, "host", p.stem)
            frame.to_csv(p, index=False)
    return folder, paths[1], kind


def _prefix(path, kind: str) -> str:
    return ("CSV file " if kind in ("header only", "zero bytes") else "") + str(path)


def test_a_bad_file_stops_dataset_init_in_one_line_and_writes_no_spec(spark, settings, bad_file):
    from fleetwatch.core.datasets.dataset_init import init_dataset

    folder, path, kind = bad_file
    _break(kind, path)
    with pytest.raises(FleetWatchError) as err:
        init_dataset(settings, "shop", [str(folder)], spark=spark)
    message = str(err.value)
    assert message.startswith(_prefix(path, kind) + BAD_FILES[kind][1]) and "\n" not in message, message
    assert not (settings.specs_dir / "shop.toml").exists()


def test_a_bad_file_stops_ingest_in_one_line_and_writes_nothing(spark, settings, bad_file):
    from fleetwatch.core.datasets.dataset_init import init_dataset
    from fleetwatch.core.datasets.files import ingest_files

    folder, path, kind = bad_file
    init_dataset(settings, "shop", [str(folder)], spark=spark)
    _break(kind, path)
    with pytest.raises(FleetWatchError) as err:
        ingest_files(settings, "shop", [str(folder)], spark=spark)
    message = str(err.value)
    assert message.startswith(_prefix(path, kind) + BAD_FILES[kind][0]) and "\n" not in message, message
    lake = Lake(settings.lake_root)
    assert not lake.exists(lake.raw("shop"))


def test_a_dt_lake_with_the_spec_columns_is_read_in_place(spark, settings, tmp_path):
    from fleetwatch.core.datasets.dataset_init import init_dataset
    from fleetwatch.core.datasets.files import ingest_files
    from fleetwatch.core.quality import validate_partition

    lake_dir = tmp_path / "their-lake" / "metrics"
    rows = pd.concat([f.assign(host=e) for e, f in series(2).items()], ignore_index=True)
    rows = rows[["host", "ts", "cpu_pct", "mem_mb"]]
    for day, part in rows.groupby(rows["ts"].dt.date):
        (lake_dir / f"dt={day}").mkdir(parents=True)
        part.to_parquet(lake_dir / f"dt={day}" / "part-0.parquet", index=False, coerce_timestamps="us")
    summary = init_dataset(settings, "theirs", [str(lake_dir)], spark=spark)
    assert summary["layout"] == "hive-daily" and summary["raw_path"] == str(lake_dir)
    assert "read in place, nothing copied" in (settings.specs_dir / "theirs.toml").read_text()
    assert ingest_files(settings, "theirs", [str(lake_dir)], spark=spark)["in_place"] == str(lake_dir)
    assert not Lake(settings.lake_root).exists(Lake(settings.lake_root).raw("theirs"))
    assert validate_partition(spark, settings, "theirs", START.date()).startswith("valid")


@pytest.fixture
def restore_environ():
    """prepare_airflow exports Airflow's and FleetWatch's variables process-wide: undo that."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


# -- the whole way, slow -----------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.slow
def test_csv_export_through_the_dags_to_backtest_report(spark, settings, tmp_path, monkeypatch, restore_environ):
    """init -> ingest -> nightly DAG runs -> retrain DAG -> evaluate NAME --labels, on 5-minute CSVs."""
    from fleetwatch.app.labelled_evaluation import evaluate_labelled
    from fleetwatch.app.orchestration import (
        nightly_dag_id,
        nightly_logical_date,
        prepare_airflow,
        run_nightly,
        run_retrain,
        task_states,
    )
    from fleetwatch.core.alerts_store import AlertsStore
    from fleetwatch.core.datasets.dataset_init import init_dataset
    from fleetwatch.core.datasets.files import ingest_files
    from fleetwatch.core.settings import Settings
    from models import registry

    monkeypatch.setenv("FLEETWATCH_MIN_HISTORY_DAYS", "2")
    monkeypatch.setenv("FLEETWATCH_TRAINING_WINDOW_DAYS", "3")
    monkeypatch.setenv("FLEETWATCH_SPARK_MASTER", "local[2]")
    monkeypatch.setenv("FLEETWATCH_SPARK_SHUFFLE_PARTITIONS", "2")
    s = Settings()
    n_days, train = 4, 3  # three nights of history, the retrain, one night that holds both anomalies
    days = [START.date() + dt.timedelta(days=i) for i in range(n_days)]
    folder = tmp_path / "export"
    write_csvs(folder, days=n_days)

    init_dataset(s, "shop", [str(folder)], spark=spark)
    spec = load_spec(s.specs_dir, "shop")
    assert (spec.entity_from, spec.timestamp_column, spec.sampling_seconds) == ("file_name", "timestamp", 300)
    assert spec.metric_names == ["cpu_pct", "mem_mb", "requests"]
    assert [m.dtype for m in spec.metrics] == ["double", "double", "long"]
    ingested = ingest_files(s, "shop", [str(folder)], spark=spark)
    assert ingested["partitions"] == n_days and ingested["entities"] == 3 and not ingested["rows_outside_spec"]
    lake = Lake(s.lake_root)
    assert lake.days(lake.raw("shop")) == days
    first = pd.read_parquet(lake.raw("shop", days[0]))
    assert set(first["entity_id"]) == {"web-01", "web-02"}  # db-01 starts a day late
    gap_day = pd.read_parquet(lake.raw("shop", days[2]))
    assert (gap_day["entity_id"] == "web-02").sum() == ROWS_PER_DAY - 6  # its 30-minute gap

    prepare_airflow(s)
    for day in days[:train]:
        assert run_nightly(s, "shop", day) == "success", day
    assert task_states(nightly_dag_id("shop"), nightly_logical_date(s, days[0]))["score"] == "skipped"
    assert run_retrain(s, "shop", days[train - 1]) == "success"
    assert registry.champion_version(s, "shop") == "1"
    for day in days[train:]:
        assert run_nightly(s, "shop", day) == "success", day
        assert task_states(nightly_dag_id("shop"), nightly_logical_date(s, day))["publish"] == "success"

    store = AlertsStore(s.alerts_db_url)
    nights = store.frame("shop")
    assert set(nights["dt"]) <= set(days[train:]) and (nights["model_version"] == "1").all()
    for entity, row, length, metric, _ in ANOMALIES:
        start = START + pd.Timedelta(minutes=5 * row)
        hit = nights[(nights["entity_id"] == entity) & (pd.to_datetime(nights["end_ts"], utc=True) >= start)
                     & (pd.to_datetime(nights["start_ts"], utc=True) <= start + pd.Timedelta(minutes=5 * length))]
        assert len(hit) >= 1 and hit["top_metrics"].iloc[0].split(",")[0] == metric, (entity, nights)

    labels = tmp_path / "labels.csv"
    labels_frame().to_csv(labels, index=False)
    out = tmp_path / "report" / "shop.json"
    report = evaluate_labelled(s, "shop", labels, train_days=train, out=out)

    assert report["train_days"] == ["2026-03-01", "2026-03-03"] and report["test_days"] == ["2026-03-04", "2026-03-04"]
    assert set(report["machines"]) == {"web-01", "web-02", "db-01"}
    on_disk = json.loads(out.read_text())
    assert on_disk["labels"] == str(labels) and out.with_suffix(".md").read_text().startswith("# FleetWatch on shop")
    for entity, _, length, _, _ in ANOMALIES:
        r = report["machines"][entity]
        assert r["labelled_rows"] == length and r["labelled_segments"] == 1
        assert r["test_rows"] == ROWS_PER_DAY and r["test_days"] == pytest.approx(1.0)
        assert r["event_recall"] == 1.0 and r["roc_auc"] > 0.9, (entity, r)
        assert r["interpretation_events"] == 1 and r["hitrate_150"] == 1.0, (entity, r)
    assert report["machines"]["web-02"]["labelled_rows"] == 0
    assert report["event_recall_mean"] == 1.0 and report["mlflow_run_id"]
    # the backtest ran the nights' own functions on the same rows with the same seed: the same alerts
    after = store.frame("shop")
    key = ["entity_id", "start_ts", "end_ts", "n_points", "top_metrics"]
    pd.testing.assert_frame_equal(
        nights[key].sort_values(key[:2]).reset_index(drop=True), after[key].sort_values(key[:2]).reset_index(drop=True)
    )


@pytest.mark.integration
@pytest.mark.slow
def test_entities_at_5_minutes_and_1_minute_that_start_and_stop_on_other_days(spark, settings, tmp_path):
    """A 1-minute entity beside the 5-minute ones, from day 2 to day 4 of 5: each is smoothed, thresholded,
    grouped into incidents and counted in days at its own pace."""
    from fleetwatch.app.labelled_evaluation import evaluate_labelled
    from fleetwatch.core.datasets.dataset_init import init_dataset
    from fleetwatch.core.datasets.files import ingest_files

    folder = tmp_path / "export"
    write_csvs(folder, days=5)
    _, fast = write_minute_csv(folder)
    with pytest.raises(SpecError, match=r"^mixed sampling: entities report every 60 s \(1 entity\), 300 s \(3 entities\)"):
        init_dataset(settings, "mixed", [str(folder)], spark=spark)
    init_dataset(settings, "mixed", [str(folder)], sampling_seconds=60, spark=spark)
    assert ingest_files(settings, "mixed", [str(folder)], spark=spark)["entities"] == 4
    labels = tmp_path / "labels.csv"
    pd.concat([labels_frame(), pd.DataFrame([fast])], ignore_index=True).to_csv(labels, index=False)

    settings = settings.model_copy(update={"min_history_days": 2})
    report = evaluate_labelled(settings, "mixed", labels, train_days=3, out=tmp_path / "report" / "mixed.json")

    rows = {"web-01": 8, "db-01": 8, "api-01": 20}
    for entity, labelled in rows.items():
        r = report["machines"][entity]
        assert r["labelled_rows"] == labelled and r["event_recall"] == 1.0 and r["roc_auc"] > 0.9, (entity, r)
        assert r["hitrate_150"] == 1.0, (entity, r)
    # days of data at each entity's pace: 576 five-minute rows are 2 days, 1440 minute rows 1 day
    assert [report["machines"][e]["test_days"] for e in ("web-01", "web-02", "api-01")] == [2.0, 2.0, 1.0]
    assert report["machines"]["api-01"]["test_rows"] == 1440
