"""Feature views and the feature job: values against pandas, lookback, reruns, atomic writes."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from feature_store.views import FeatureView, view_for
from fleetwatch.core.errors import PartitionNotFound
from fleetwatch.core.lake import Lake, write_pandas_partition
from fleetwatch.core.specs import DatasetSpec, MetricSpec, write_spec

PREV, DAY = dt.date(2026, 3, 1), dt.date(2026, 3, 2)
SPEC = DatasetSpec(
    name="fleet",
    metrics=[MetricSpec(name="cpu", min=0, max=100), MetricSpec(name="requests", dtype="long", min=0)],
)


def _raw_day(day: dt.date, first: str, seed: int) -> pd.DataFrame:
    """120 one-minute rows per entity from ``first`` (UTC); entity b misses ten minutes."""
    rng = np.random.default_rng(seed)
    frames = []
    for entity in ("a", "b"):
        ts = pd.date_range(f"{day} {first}", periods=120, freq="1min", tz="UTC")
        frame = pd.DataFrame(
            {
                "entity_id": entity,
                "ts": ts,
                "cpu": rng.normal(50, 10, len(ts)).round(3),
                "requests": rng.poisson(100, len(ts)).astype("int64"),
            }
        )
        if entity == "b":
            frame = frame[(frame.ts.dt.minute < 10) | (frame.ts.dt.minute >= 20) | (frame.ts.dt.hour % 2 == 1)]
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


@pytest.fixture
def fleet(settings):
    """A spec and two raw partitions: dt-1 from 22:00 to 23:59, dt from 00:00 to 01:59."""
    write_spec(settings.specs_dir, SPEC)
    lake = Lake(settings.lake_root)
    raw = {PREV: _raw_day(PREV, "22:00", 1), DAY: _raw_day(DAY, "00:00", 2)}
    for day, frame in raw.items():
        write_pandas_partition(lake, frame, lake.raw("fleet", day))
    return lake, raw


def _expected(raw: pd.DataFrame, view: FeatureView) -> pd.DataFrame:
    """The view's features computed independently with pandas' time-based rolling windows."""
    out = []
    for entity, g in raw.sort_values("ts").groupby("entity_id"):
        g = g.set_index(g.ts.dt.tz_localize(None))
        cols = {"entity_id": entity, "ts": g.index}
        minutes = g.index.to_series().diff().dt.total_seconds().to_numpy() / 60
        for m in view.metrics:
            x = g[m].astype(float)
            cols[m] = x.to_numpy()
            for w in view.windows_minutes:
                roll = x.rolling(f"{w}min")
                mean, std = roll.mean().to_numpy(), roll.std().fillna(0.0).to_numpy()
                cols[f"{m}__mean_{w}m"], cols[f"{m}__std_{w}m"] = mean, std
                z = np.divide(x.to_numpy() - mean, std, out=np.zeros(len(x)), where=std > 0)
                cols[f"{m}__z_{w}m"] = z
            cols[f"{m}__roc"] = np.nan_to_num(x.diff().to_numpy() / minutes, nan=0.0)
        out.append(pd.DataFrame(cols))
    return pd.concat(out, ignore_index=True)


def _features(spark, lake: Lake, day: dt.date) -> pd.DataFrame:
    path = lake.features("fleet", view_for(SPEC).ref, day)
    return spark.read.parquet(path).toPandas().sort_values(["entity_id", "ts"]).reset_index(drop=True)


def _files(lake: Lake, day: dt.date) -> set[str]:
    return {p.name for p in Path(lake.features("fleet", view_for(SPEC).ref, day)).iterdir()}


def test_view_declares_columns_in_fixed_order_and_maps_them_to_metrics():
    view = view_for(SPEC)
    assert (view.ref, view.lookback_minutes, view.windows_minutes) == ("telemetry@v1", 60, (5, 15, 60))
    cols = view.feature_columns
    assert cols[:5] == ["cpu", "cpu__mean_5m", "cpu__std_5m", "cpu__z_5m", "cpu__mean_15m"]
    assert cols[9:12] == ["cpu__z_60m", "cpu__roc", "requests"]
    assert len(cols) == len(set(cols)) == 2 * (1 + 3 * 3 + 1)
    assert [view.metric_of(c) for c in cols] == ["cpu"] * 11 + ["requests"] * 11
    with pytest.raises(KeyError, match="cpu__z_30m"):
        view.metric_of("cpu__z_30m")
    with pytest.raises(ValueError, match="cpu__roc"):
        FeatureView("v", 1, "entity_id", "ts", ("cpu", "cpu__roc"))
    with pytest.raises(ValueError, match="windows repeat"):
        FeatureView("v", 1, "entity_id", "ts", ("cpu",), (5, 5))


@pytest.mark.integration
def test_features_match_pandas_rolling_and_use_the_previous_day_tail(spark, settings, fleet):
    from feature_store.pipeline import build_features

    lake, raw = fleet
    view = view_for(SPEC)
    summary = build_features(spark, settings, "fleet", DAY)
    assert "230 feature rows" in summary and lake.features("fleet", "telemetry@v1", DAY) in summary

    schema = spark.read.parquet(lake.features("fleet", view.ref, DAY)).dtypes
    assert [c for c, _ in schema] == ["entity_id", "ts", *view.feature_columns]
    assert {t for c, t in schema[2:]} == {"double"}

    got = _features(spark, lake, DAY)
    expected = _expected(pd.concat([raw[PREV], raw[DAY]]), view)
    expected = expected[expected.ts >= pd.Timestamp(DAY)].reset_index(drop=True)
    assert len(got) == 230 and got.ts.min() == pd.Timestamp(DAY)
    pd.testing.assert_frame_equal(got, expected, check_dtype=False, rtol=1e-9, atol=1e-9)

    # By hand: a's first row of dt uses dt-1's last four minutes and its 23:59 row for the rate.
    a_prev, a_day = raw[PREV][raw[PREV].entity_id == "a"].cpu.to_numpy(), raw[DAY][raw[DAY].entity_id == "a"].cpu.to_numpy()
    window = np.r_[a_prev[-4:], a_day[:1]]
    first = got.iloc[0]
    assert first.cpu__mean_5m == pytest.approx(window.mean())
    assert first.cpu__std_5m == pytest.approx(window.std(ddof=1))
    assert first.cpu__z_5m == pytest.approx((a_day[0] - window.mean()) / window.std(ddof=1))
    assert first.cpu__mean_60m == pytest.approx(np.r_[a_prev[-59:], a_day[:1]].mean())
    assert first.cpu__roc == pytest.approx(a_day[0] - a_prev[-1])
    # b's first row after its ten-minute gap: the 5-minute window holds that row only.
    b = got[got.entity_id == "b"].set_index("ts")
    after_gap = b.loc[pd.Timestamp(f"{DAY} 00:20")]
    assert (after_gap.cpu__mean_5m, after_gap.cpu__std_5m, after_gap.cpu__z_5m) == (after_gap.cpu, 0.0, 0.0)
    assert after_gap.requests__mean_15m == pytest.approx(b.loc[f"{DAY} 00:06":f"{DAY} 00:20"].requests.mean())
    assert after_gap.cpu__roc == pytest.approx((after_gap.cpu - b.loc[pd.Timestamp(f"{DAY} 00:09")].cpu) / 11)


@pytest.mark.integration
def test_day_is_the_same_whatever_ran_before_and_a_rerun_replaces_it(spark, settings, fleet):
    from feature_store.pipeline import build_features

    lake, _ = fleet
    build_features(spark, settings, "fleet", DAY)
    first, first_files = _features(spark, lake, DAY), _files(lake, DAY)

    build_features(spark, settings, "fleet", PREV)
    prev = _features(spark, lake, PREV)
    assert len(prev) == 230 and (prev.groupby("entity_id").cpu__roc.first() == 0).all()  # no dt-2: no lookback

    build_features(spark, settings, "fleet", DAY)
    again, again_files = _features(spark, lake, DAY), _files(lake, DAY)
    pd.testing.assert_frame_equal(again, first)
    assert not again.duplicated(["entity_id", "ts"]).any()
    parts = lambda files: {f for f in files if f.startswith("part-")}  # noqa: E731
    assert parts(first_files) and parts(again_files).isdisjoint(parts(first_files))
    features_dir = Path(lake.features("fleet", "telemetry@v1"))
    assert sorted(p.name for p in features_dir.iterdir()) == [f"dt={PREV}", f"dt={DAY}"]  # no staging left


@pytest.mark.integration
def test_missing_raw_partition_fails_and_writes_nothing(spark, settings, fleet):
    from feature_store.pipeline import build_features

    lake, _ = fleet
    missing = DAY + dt.timedelta(days=5)
    with pytest.raises(PartitionNotFound, match=rf"'fleet'.*dt={missing}.*{lake.raw('fleet', missing)}.*never landed"):
        build_features(spark, settings, "fleet", missing)
    lake.move(lake.raw("fleet", DAY), lake.partition("quarantine", "fleet", DAY))
    with pytest.raises(PartitionNotFound, match=rf"dt={DAY}.*quarantined"):
        build_features(spark, settings, "fleet", DAY)
    assert not Path(lake.zone("features", "fleet")).exists()


@pytest.mark.integration
def test_failed_task_keeps_the_previous_partition(spark, settings, fleet):
    from pyspark.sql import functions as F

    from feature_store.offline_store import OfflineStore
    from feature_store.partition_writer import write_features_from_tasks
    from feature_store.pipeline import build_features

    lake, _ = fleet
    build_features(spark, settings, "fleet", DAY)
    before, files = _features(spark, lake, DAY), _files(lake, DAY)
    view, store = view_for(SPEC), OfflineStore(spark, lake)
    raw = store.read_raw_with_lookback(SPEC, view, DAY)
    broken = raw.withColumn("cpu", F.when(F.col("entity_id") == "b", F.raise_error(F.lit("disk full"))).otherwise(F.col("cpu")))
    with pytest.raises(Exception, match="disk full"):
        write_features_from_tasks(spark, lake, "fleet", view, DAY, broken)
    pd.testing.assert_frame_equal(_features(spark, lake, DAY), before)
    assert _files(lake, DAY) == files
    assert [p.name for p in Path(lake.features("fleet", view.ref)).iterdir()] == [f"dt={DAY}"]


@pytest.mark.integration
def test_each_file_holds_whole_entities_in_order_as_its_manifest_says(spark, settings, fleet):
    import pyarrow.parquet as pq

    from feature_store.partition_reader import read_manifest
    from feature_store.pipeline import build_features

    lake, _ = fleet
    build_features(spark, settings.model_copy(update={"spark_tasks_per_slot": 7}), "fleet", DAY)  # many tasks
    path = lake.features("fleet", view_for(SPEC).ref, DAY)
    manifest = read_manifest(path)
    assert manifest["format"] == 1 and manifest["day"] == str(DAY) and manifest["rows"] == 230
    assert sorted(e for f in manifest["files"] for e in f["entities"]) == ["a", "b"]
    for entry in manifest["files"]:
        table = pq.read_table(Path(path) / entry["file"]).to_pandas()
        assert table.entity_id.unique().tolist() == entry["entities"]  # whole entities, in order
        assert table.groupby("entity_id", sort=False).size().tolist() == entry["entity_rows"]
        assert table.ts.is_monotonic_increasing or all(g.ts.is_monotonic_increasing for _, g in table.groupby("entity_id"))
    assert sorted(p.name for p in Path(path).iterdir() if p.suffix == ".parquet") == sorted(f["file"] for f in manifest["files"])
    assert read_manifest(lake.features("fleet", view_for(SPEC).ref, PREV)) is None  # no partition, no manifest


@pytest.mark.integration
def test_the_step_spreads_its_entities_over_every_task_slot(spark, settings):
    """Adaptive execution merges small shuffle partitions: a repartition by column alone ran a
    small fleet's features as one task. The step keeps ``tasks_per_slot`` tasks a slot."""
    from feature_store.offline_store import OfflineStore
    from feature_store.partition_reader import read_manifest
    from feature_store.partition_writer import write_features_from_tasks
    from fleetwatch.core.spark import task_slots

    write_spec(settings.specs_dir, SPEC)
    lake = Lake(settings.lake_root)
    ts = pd.date_range(f"{DAY} 00:00", periods=30, freq="1min", tz="UTC")
    raw = pd.DataFrame({"entity_id": np.repeat([f"e{i:02d}" for i in range(40)], len(ts)), "ts": np.tile(ts, 40),
                        "cpu": 50.0, "requests": np.int64(100)})
    write_pandas_partition(lake, raw, lake.raw("fleet", DAY))
    view = view_for(SPEC)
    rows = OfflineStore(spark, lake).read_raw_with_lookback(SPEC, view, DAY)
    assert spark.conf.get("spark.sql.adaptive.enabled") == "true"
    path, n = write_features_from_tasks(spark, lake, "fleet", view, DAY, rows, tasks_per_slot=2)
    manifest = read_manifest(path)
    assert n == 1200 and len(manifest["files"]) == 2 * task_slots(spark)  # every task had entities, and wrote them
    assert sorted(e for f in manifest["files"] for e in f["entities"]) == sorted(raw.entity_id.unique())


def test_whole_entities_joins_an_entity_across_batches_and_refuses_unsorted_rows():
    from feature_store.partition_writer import whole_entities

    batches = [pd.DataFrame({"e": ["a", "a", "b"], "v": [1, 2, 3]}), pd.DataFrame({"e": ["b", "c"], "v": [4, 5]}),
               pd.DataFrame({"e": [], "v": []}), pd.DataFrame({"e": ["c"], "v": [6]})]
    got = [(g.e.iloc[0], g.v.tolist()) for g in whole_entities(iter(batches), "e")]
    assert got == [("a", [1, 2]), ("b", [3, 4]), ("c", [5, 6])]
    with pytest.raises(ValueError, match="'a' are not contiguous"):
        list(whole_entities(iter([pd.DataFrame({"e": ["a", "b"]}), pd.DataFrame({"e": ["a"]})]), "e"))
    with pytest.raises(ValueError, match="e are not contiguous within a batch"):
        list(whole_entities(iter([pd.DataFrame({"e": ["a", "b", "a"]})]), "e"))


def test_task_file_tables_equal_what_arrow_makes_of_the_frame():
    import pyarrow as pa

    from fleetwatch.core.task_files import arrow_table, arrow_table_of

    schema = pa.schema([pa.field("entity", pa.string()), pa.field("ts", pa.timestamp("us", tz="UTC")),
                        pa.field("x", pa.float64()), pa.field("flag", pa.bool_()), pa.field("n", pa.int32()),
                        pa.field("day", pa.date32())])
    naive = pd.DataFrame({"entity": ["a", None, "c"], "ts": pd.to_datetime(["2026-03-02 00:01", None, "2026-03-02 00:03"]),
                          "x": [1.5, np.nan, -np.inf], "flag": [True, False, True], "n": [1, 2, 3],
                          "day": [DAY, None, DAY]})
    aware = naive.assign(ts=naive["ts"].dt.tz_localize("UTC"))
    expected = pa.Table.from_pandas(aware, schema=schema, preserve_index=False)
    for frame in (naive, aware):  # naive timestamps are UTC
        got = arrow_table(frame, schema)
        assert got.equals(expected)
    assert got.column("x").null_count == 1 and got.column("ts").null_count == 1  # NaN and NaT as nulls, as pandas means them
    assert got.column("x")[2].as_py() == -np.inf
    arrays = {"entity": naive["entity"].to_numpy(), "ts": pd.DatetimeIndex(aware["ts"]), "x": naive["x"].to_numpy(),
              "flag": naive["flag"].to_numpy(), "n": naive["n"].to_numpy(), "day": naive["day"]}
    assert arrow_table_of(arrays, schema).equals(expected)  # arrays, a zoned index: the same table


def test_a_features_task_file_holds_each_entitys_windows_of_the_day(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from feature_store.partition_writer import _write_file, arrow_schema

    view = view_for(SPEC)
    raw = pd.concat([_raw_day(PREV, "22:00", 1), _raw_day(DAY, "00:00", 2)], ignore_index=True)
    rows = raw.assign(ts=raw["ts"].dt.tz_localize(None)).sort_values(["entity_id", "ts"], kind="stable")
    batches = [rows.iloc[i : i + 100].reset_index(drop=True) for i in range(0, len(rows), 100)]  # an entity spans batches
    window = (pd.Timestamp(DAY), pd.Timestamp(DAY) + pd.Timedelta(days=1))
    meta = _write_file(iter(batches), view, arrow_schema(view, pa.string()), str(tmp_path), window)

    assert meta["entity"].tolist() == ["a", "b"] and meta["rows"].tolist() == [120, 110]
    got = pq.read_table(tmp_path / meta["file"].iloc[0]).to_pandas()
    expected = _expected(raw, view)
    expected = expected[expected.ts >= pd.Timestamp(DAY)].reset_index(drop=True)
    assert str(got["ts"].dt.tz) == "UTC"  # naive task timestamps are written as UTC instants
    got["ts"] = got["ts"].dt.tz_localize(None)
    pd.testing.assert_frame_equal(got, expected, check_dtype=False, rtol=1e-9, atol=1e-9)


def test_incident_tables_hold_utc_instants_a_day_and_text_lineage(tmp_path):
    import pyarrow.parquet as pq

    from fleetwatch.core.task_files import TaskFile
    from models.entity_scoring import INCIDENT_COLUMNS, INCIDENT_SCHEMA, arrow_schema, incident_table

    schema = arrow_schema(INCIDENT_SCHEMA)
    base = {c: f"{c}-text" for c in INCIDENT_COLUMNS} | {"n_points": 3, "peak_score": 2.5, "threshold": 1.0}
    records = [
        {**base, "entity_id": "a", "dt": DAY, "start_ts": pd.Timestamp(f"{DAY} 01:00"), "end_ts": pd.Timestamp(f"{DAY} 01:02"),
         "model_version": 3, "run_id": None},
        {**base, "entity_id": "a", "dt": pd.Timestamp(DAY), "start_ts": pd.Timestamp(f"{DAY} 03:00", tz="Europe/Berlin"),
         "end_ts": pd.Timestamp(f"{DAY} 04:00", tz="UTC"), "model_version": "4"},
    ]
    table = incident_table(records, schema)
    assert table.schema.equals(schema)
    rows = table.to_pylist()
    assert [r["start_ts"] for r in rows] == [pd.Timestamp(f"{DAY} 01:00", tz="UTC"), pd.Timestamp(f"{DAY} 02:00", tz="UTC")]
    assert [r["dt"] for r in rows] == [DAY, DAY] and [r["model_version"] for r in rows] == ["3", "4"]
    assert rows[0]["run_id"] is None and rows[1]["n_points"] == 3

    out = TaskFile(str(tmp_path), schema, dictionary=["entity_id"])
    out.append_table("a", table)
    with pytest.raises(ValueError, match="entity 'b'.*schema"):
        out.append_table("b", table.drop_columns(["phases"]))
    name = out.close()
    assert pq.read_table(tmp_path / name).equals(table) and out.entity_rows == [("a", 2)]  # the refused rows not written


@pytest.mark.integration
def test_read_features_adds_dt_and_skips_missing_days(spark, settings, fleet):
    from feature_store.offline_store import OfflineStore
    from feature_store.pipeline import build_features

    lake, _ = fleet
    view, store = view_for(SPEC), OfflineStore(spark, lake)
    assert store.available_days("fleet", view) == []
    with pytest.raises(PartitionNotFound, match=rf"'fleet'.*telemetry@v1.*{DAY}"):
        store.read_features("fleet", view, [DAY])
    build_features(spark, settings, "fleet", DAY)
    assert store.available_days("fleet", view) == [DAY]
    frame = store.read_features("fleet", view, [PREV, DAY])
    assert dict(frame.dtypes)["dt"] == "date"
    assert {r.dt for r in frame.select("dt").distinct().collect()} == {DAY}
    assert frame.count() == 230


@pytest.mark.integration
def test_pandas_windows_match_sql_range_frames_with_ties_gaps_and_missing_values(spark):
    from benchmarks.feature_engines import sql_range_frames  # Spark SQL range frames: an independent oracle
    from feature_store.transforms import compute_features

    rng = np.random.default_rng(7)
    ts = pd.date_range("2026-03-02", periods=400, freq="1min")
    frame = pd.DataFrame({"entity_id": rng.choice(["a", "b", "c"], len(ts)), "ts": ts, "cpu": rng.normal(50, 10, len(ts))})
    frame["requests"] = rng.poisson(100, len(ts)).astype(float)
    frame = frame.drop(index=range(100, 130))  # a half-hour gap for every entity
    frame.loc[frame.index[::37], "cpu"] = np.nan  # missing values
    ties = frame[frame.entity_id == "a"].iloc[[5, 50, 51]].assign(cpu=[1.0, 99.0, 7.0])  # rows sharing a timestamp
    frame = pd.concat([frame, ties], ignore_index=True).sample(frac=1, random_state=1)  # any order in
    frame.loc[frame.index[0], "requests"] = 5.0  # a constant-window row gives z = 0

    df = spark.createDataFrame(frame.astype({"ts": "datetime64[us]"}))
    view = view_for(SPEC)
    got = compute_features(df, view).toPandas()
    want = sql_range_frames(df, view).toPandas()
    key = ["entity_id", "ts", "cpu"]
    got, want = (f.sort_values(key, na_position="first").reset_index(drop=True) for f in (got, want))
    assert list(got.columns) == ["entity_id", "ts", *view.feature_columns] and len(got) == len(frame)
    rate = [f"{m}__roc" for m in view.metrics]
    tied = got.duplicated(["entity_id", "ts"], keep=False)
    after_tie = tied.groupby(got.entity_id).shift(1, fill_value=False)
    # Rows that share a timestamp share every window; their order among themselves, and so the
    # rate of change of them and of the row after them, is arbitrary in SQL.
    pd.testing.assert_frame_equal(got.drop(columns=rate), want.drop(columns=rate), check_dtype=False, rtol=1e-9, atol=1e-9)
    plain = ~(tied | after_tie)
    pd.testing.assert_frame_equal(got.loc[plain], want.loc[plain], check_dtype=False, rtol=1e-9, atol=1e-9)
    zero_rates = (got.loc[tied, "requests__roc"] == 0).groupby(got.loc[tied, "ts"]).agg(["sum", "size"])
    assert (zero_rates["sum"] >= zero_rates["size"] - 1).all()  # no time passes between peers
    assert got.cpu.isna().sum() >= 10
    assert got.cpu__z_5m.isna().equals(got.cpu.isna() & (got.cpu__std_5m > 0))  # missing where the window varies
    assert (got.loc[tied].groupby("ts").cpu__mean_5m.nunique() == 1).all()


def test_read_nights_passes_over_missing_nights_and_nights_without_the_column(spark, settings):
    lake = Lake(settings.lake_root)
    day1, day2, day3 = dt.date(2026, 3, 1), dt.date(2026, 3, 2), dt.date(2026, 3, 3)
    spark.createDataFrame(pd.DataFrame({"entity_id": ["a"], "score": [1.0]})).write.parquet(
        lake.partition("scores", "nights", day1))  # written before the column existed
    capped = pd.DataFrame({"entity_id": ["a", "b"], "score": [1.0, 2.0], "alarm_cap": [1.0, 3.0]})
    spark.createDataFrame(capped).write.parquet(lake.partition("scores", "nights", day3))
    nights = lake.read_nights(spark, "scores", "nights", [day1, day2, day3], "alarm_cap")
    assert [day for day, _ in nights] == [day3]
    assert sorted(r["entity_id"] for r in nights[0][1].filter("alarm_cap > 1").collect()) == ["b"]
