"""Partition validation: real Spark and Great Expectations on small partitions with known defects."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fleetwatch.core.errors import PartitionNotFound, ValidationFailed
from fleetwatch.core.lake import Lake, write_pandas_partition, write_spark_partition
from fleetwatch.core.quality import build_suite, validate_partition
from fleetwatch.core.specs import DatasetSpec, MetricSpec, write_spec

DAY = dt.date(2026, 1, 3)
NEXT = DAY + dt.timedelta(days=1)
SPEC = DatasetSpec(
    name="fleet",
    min_rows=50,
    metrics=[
        MetricSpec(name="cpu", dtype="double", min=0, max=100),
        MetricSpec(name="mem", dtype="long", min=0),
    ],
)


def _frame(day: dt.date = DAY, rows: int = 100) -> pd.DataFrame:
    """Two entities, one reading a minute each, all valid."""
    ts = pd.date_range(pd.Timestamp(day, tz="UTC"), periods=rows, freq="60s")
    return pd.DataFrame(
        {
            "entity_id": ["e0"] * rows + ["e1"] * rows,
            "ts": list(ts) * 2,
            "cpu": np.linspace(1.0, 99.0, 2 * rows),
            "mem": np.arange(2 * rows, dtype="int64") * 1000,
        }
    )


@pytest.fixture
def lake(settings) -> Lake:
    write_spec(settings.specs_dir, SPEC)
    return Lake(settings.lake_root)


def _result(lake: Lake, day: dt.date = DAY) -> dict:
    return json.loads((Path(lake.partition("validation", "fleet", day)) / "result.json").read_text())


def test_suite_is_derived_from_the_spec():
    kinds = [(e.expectation_type, e.configuration.kwargs.get("column")) for e in build_suite(SPEC, DAY)]
    assert ("expect_column_values_to_be_of_type", "mem") in kinds
    assert ("expect_column_values_to_be_between", "cpu") in kinds
    # mem is a long with no upper bound: a range check with min only, and no NaN check
    assert ("unexpected_rows_expectation", None) in kinds
    assert sum(1 for k in kinds if k[0] == "unexpected_rows_expectation") == 1
    assert ("expect_column_values_to_not_be_null", "cpu") in kinds  # no nulls: max_null_share 0
    assert len(kinds) == 15


@pytest.mark.integration
def test_valid_partition_passes_stays_in_raw_and_revalidates(spark, settings, lake):
    write_pandas_partition(lake, _frame(), lake.raw("fleet", DAY))

    first = validate_partition(spark, settings, "fleet", DAY)
    again = validate_partition(spark, settings, "fleet", DAY)

    assert first == again == "valid: 200 rows, 15 expectations"
    assert lake.exists(lake.raw("fleet", DAY))
    assert not lake.exists(lake.partition("quarantine", "fleet", DAY))
    result = _result(lake)
    assert result["success"] is True and result["failures"] == [] and result["rows"] == 200
    assert result["great_expectations"]["success"] is True
    assert len(result["great_expectations"]["results"]) == 15
    assert (Path(lake.partition("validation", "fleet", DAY)) / "report.html").stat().st_size > 1000
    print(f"one validation took {result['duration_s']} s")


def _nan_and_inf(spark, frame):
    """cpu NaN for e0's first reading and +inf for e1's (pandas would write NaN as null)."""
    from pyspark.sql import functions as F

    first = F.col("ts") == F.lit(pd.Timestamp(DAY, tz="UTC").to_pydatetime())
    cpu = (
        F.when(first & (F.col("entity_id") == "e0"), F.lit(float("nan")))
        .when(first & (F.col("entity_id") == "e1"), F.lit(float("inf")))
        .otherwise(F.col("cpu"))
    )
    return spark.createDataFrame(frame).withColumn("cpu", cpu)


def _outside_day(frame):
    frame.loc[0, "ts"] = pd.Timestamp(DAY, tz="UTC") - pd.Timedelta(minutes=1)
    frame.loc[1, "ts"] = pd.Timestamp(NEXT, tz="UTC")  # the next day's midnight is outside
    return frame


def _null_entity(frame):
    frame.loc[10:21, "entity_id"] = None
    return frame


# case: (corrupt the valid frame, failures as (expectation, column, count), a part of the
# message, expectations skipped as (expectation, column) because their column is missing or mistyped)
BAD = {
    "missing_column": (
        lambda f: f.drop(columns=["mem"]),
        [("expect_table_columns_to_match_set", "mem", 1)],
        "expect_table_columns_to_match_set on mem: missing column(s) mem",
        [
            ("expect_column_values_to_be_of_type", "mem"),
            ("expect_column_values_to_not_be_null", "mem"),
            ("expect_column_values_to_be_between", "mem"),
        ],
    ),
    "extra_column": (
        lambda f: f.assign(temp=1.0),
        [("expect_table_columns_to_match_set", "temp", 1)],
        "expect_table_columns_to_match_set on temp: unexpected column(s) temp",
        [],
    ),
    "metric_of_wrong_type": (
        lambda f: f.assign(cpu=f["cpu"].map(lambda v: f"{v:.1f}%")),
        [("expect_column_values_to_be_of_type", "cpu", None)],
        "expect_column_values_to_be_of_type on cpu: type is StringType, expected DoubleType",
        [
            ("expect_column_values_to_not_be_null", "cpu"),
            ("expect_column_values_to_be_between", "cpu"),
            ("unexpected_rows_expectation", "cpu"),
        ],
    ),
    "nan_and_inf": (
        _nan_and_inf,
        [("expect_column_values_to_be_between", "cpu", 2), ("unexpected_rows_expectation", "cpu", 2)],
        "unexpected_rows_expectation on cpu: 2 rows (no NaN or infinite value)",
        [],
    ),
    "null_entity": (
        _null_entity,
        [("expect_column_values_to_not_be_null", "entity_id", 12)],
        "expect_column_values_to_not_be_null on entity_id: 12 null values",
        [],
    ),
    "timestamps_outside_day": (
        _outside_day,
        [("expect_column_values_to_be_between", "ts", 2)],
        "expect_column_values_to_be_between on ts: 2 rows",
        [],
    ),
    "duplicate_entity_ts": (
        lambda f: pd.concat([f, f.iloc[:3]], ignore_index=True),
        [("expect_compound_columns_to_be_unique", "entity_id,ts", 6)],
        "expect_compound_columns_to_be_unique on entity_id,ts: 6 rows",
        [],
    ),
    "empty_partition": (
        lambda f: f.iloc[:0].astype({"entity_id": "string"}),
        [("expect_table_row_count_to_be_between", None, 0)],
        "expect_table_row_count_to_be_between: 0 rows, at least 50 required",
        [],
    ),
}


@pytest.mark.integration
@pytest.mark.parametrize("case", list(BAD))
def test_bad_partition_is_quarantined_and_reported(spark, settings, lake, case):
    corrupt, expected, message, skipped = BAD[case]
    bad = corrupt(spark, _frame()) if corrupt is _nan_and_inf else corrupt(_frame())
    if isinstance(bad, pd.DataFrame):
        write_pandas_partition(lake, bad, lake.raw("fleet", DAY))
    else:
        write_spark_partition(lake, bad, lake.raw("fleet", DAY), spark)
    neighbour = Path(write_pandas_partition(lake, _frame(NEXT), lake.raw("fleet", NEXT)))
    before = {p.name: p.read_bytes() for p in neighbour.iterdir()}

    with pytest.raises(ValidationFailed) as err:
        validate_partition(spark, settings, "fleet", DAY)

    text = str(err.value)
    assert "\n" not in text
    assert text.startswith("fleet dt=2026-01-03 failed validation: ")
    assert message in text
    copy = text.rsplit("partition moved to ", 1)[1]
    assert Path(copy).parent == Path(lake.partition("quarantine", "fleet", DAY))  # a copy named by its time
    assert not lake.exists(lake.raw("fleet", DAY))
    assert any(Path(copy).glob("*.parquet"))
    result = _result(lake)
    assert result["success"] is False
    assert [(f["expectation"], f["column"], f["count"]) for f in result["failures"]] == expected
    assert [(s["expectation"], s["column"]) for s in result["skipped"]] == skipped
    assert result["great_expectations"]["success"] is False
    # the other partition of the dataset is untouched and was not validated
    assert {p.name: p.read_bytes() for p in neighbour.iterdir()} == before
    assert not lake.exists(lake.partition("quarantine", "fleet", NEXT))
    assert not lake.exists(lake.partition("validation", "fleet", NEXT))
    # validating again says where the partition went
    with pytest.raises(PartitionNotFound, match="it is quarantined at .*quarantine/fleet/dt=2026-01-03"):
        validate_partition(spark, settings, "fleet", DAY)


@pytest.mark.integration
def test_folder_without_parquet_is_quarantined(spark, settings, lake):
    Path(lake.raw("fleet", DAY)).mkdir(parents=True)

    with pytest.raises(ValidationFailed, match=r"^fleet dt=2026-01-03 failed validation: readable_parquet: .*quarantine"):
        validate_partition(spark, settings, "fleet", DAY)

    assert not lake.exists(lake.raw("fleet", DAY))
    assert _result(lake)["failures"][0]["expectation"] == "readable_parquet"


@pytest.mark.integration
def test_missing_partition_names_dataset_date_and_path(spark, settings, lake):
    with pytest.raises(PartitionNotFound) as err:
        validate_partition(spark, settings, "fleet", DAY)

    assert str(err.value) == f"raw partition fleet dt=2026-01-03 does not exist at {lake.raw('fleet', DAY)}"
    assert not lake.exists(lake.partition("validation", "fleet", DAY))


def test_a_corrupt_page_deep_in_a_file_is_found_and_named(tmp_path):
    """The page check decodes every column chunk of every row group: damage in the last column of
    the last row group (footer intact) names the file and the reason."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fleetwatch.core.quality import _unreadable_file

    raw = tmp_path / "raw" / "fleet" / f"dt={DAY}"
    raw.mkdir(parents=True)
    table = pa.Table.from_pandas(_frame(), preserve_index=False)
    pq.write_table(table, raw / "part-00000.parquet", row_group_size=50)
    pq.write_table(table, raw / "part-00001.parquet", row_group_size=50)
    meta = pq.ParquetFile(raw / "part-00001.parquet").metadata
    last = meta.row_group(meta.num_row_groups - 1).column(meta.num_columns - 1)
    data = bytearray((raw / "part-00001.parquet").read_bytes())
    data[last.data_page_offset:last.data_page_offset + 12] = b"\xff" * 12  # the page header of that chunk
    (raw / "part-00001.parquet").write_bytes(bytes(data))
    assert pq.ParquetFile(raw / "part-00001.parquet").metadata.num_rows == 200  # the footer still reads

    found = _unreadable_file(Lake(str(tmp_path)), str(raw), spark=None)

    assert found is not None and found[0] == "part-00001.parquet" and "page header" in found[1], found
    (raw / "part-00001.parquet").unlink()
    assert _unreadable_file(Lake(str(tmp_path)), str(raw), spark=None) is None


@pytest.mark.integration
def test_nan_checks_run_as_one_query_and_a_failure_still_names_its_column(spark, settings, lake):
    from pyspark.sql import functions as F

    spec = DatasetSpec(name="wide", min_rows=50, metrics=[MetricSpec(name="cpu", dtype="double", min=0, max=100),
                                                          MetricSpec(name="load", dtype="double", min=0)])
    write_spec(settings.specs_dir, spec)
    frame = _frame().drop(columns=["mem"]).assign(load=lambda f: f["cpu"] / 10)
    write_pandas_partition(lake, frame, lake.raw("wide", DAY))

    per_column = len(build_suite(spec, DAY))
    assert validate_partition(spark, settings, "wide", DAY) == f"valid: 200 rows, {per_column - 1} expectations"
    checks = [r["expectation_config"] for r in _result_of(lake, "wide")["great_expectations"]["results"]
              if r["expectation_config"]["type"] == "unexpected_rows_expectation"]
    assert [c["meta"]["columns"] for c in checks] == [["cpu", "load"]]

    # load has no upper bound, so only the NaN check can see its NaN
    nan = F.when(F.col("ts") < F.lit(pd.Timestamp(NEXT, tz="UTC").to_pydatetime()) + F.expr("INTERVAL 3 MINUTES"),
                 F.lit(float("nan"))).otherwise(F.col("load"))
    following = _frame(NEXT).drop(columns=["mem"]).assign(load=lambda f: f["cpu"] / 10)
    write_spark_partition(lake, spark.createDataFrame(following).withColumn("load", nan), lake.raw("wide", NEXT), spark)
    with pytest.raises(ValidationFailed, match=r"unexpected_rows_expectation on load: 6 rows \(no NaN or infinite value\)"):
        validate_partition(spark, settings, "wide", NEXT)
    failures = _result_of(lake, "wide", NEXT)["failures"]
    assert [(f["expectation"], f["column"], f["count"]) for f in failures] == [("unexpected_rows_expectation", "load", 6)]


def _result_of(lake: Lake, dataset: str, day: dt.date = DAY) -> dict:
    return json.loads((Path(lake.partition("validation", dataset, day)) / "result.json").read_text())
