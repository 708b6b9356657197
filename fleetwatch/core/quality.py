"""Data quality gate of raw partitions: a Great Expectations suite derived from the dataset spec.

A partition that breaks the suite, or holds a file that is not readable Parquet (truncated,
corrupt), is moved to a new copy under ``quarantine/`` before the error is raised, so no later
step (nor the next day's lookback) can read it; every run (pass or fail) leaves its result under
``validation/``.
Expectations on a column that is missing or of the wrong type are skipped rather than run
(they would crash on the data); the column-set or type expectation already reports the problem.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import time

from fleetwatch.core.errors import PartitionNotFound, ValidationFailed
from fleetwatch.core.lake import Lake, is_local, local_path
from fleetwatch.core.raw_location import raw_partition
from fleetwatch.core.specs import DatasetSpec, load_spec

_SPARK_TYPE_NAMES = {"double": "DoubleType", "float": "FloatType", "long": "LongType", "int": "IntegerType"}
_FINITE_RULE = "no NaN or infinite value"
_ROW_COUNT = "expect_table_row_count_to_be_between"
_NOT_NULL = "expect_column_values_to_not_be_null"
_READABLE = "readable_parquet"


def build_suite(spec: DatasetSpec, day: dt.date) -> list:
    """The expectations a raw partition of ``spec`` for ``day`` must meet, in reporting order."""
    import great_expectations.expectations as gxe  # lazy: Great Expectations takes seconds to import

    start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
    entity, ts = spec.entity_column, spec.timestamp_column
    suite = [
        gxe.ExpectTableColumnsToMatchSet(column_set=spec.columns, exact_match=True),
        gxe.ExpectTableRowCountToBeBetween(min_value=spec.min_rows),
        gxe.ExpectColumnValuesToBeOfType(column=entity, type_="StringType"),
        gxe.ExpectColumnValuesToBeOfType(column=ts, type_="TimestampType"),
        gxe.ExpectColumnValuesToNotBeNull(column=entity),
        gxe.ExpectColumnValuesToNotBeNull(column=ts),
        gxe.ExpectColumnValuesToBeBetween(
            column=ts, min_value=start, max_value=start + dt.timedelta(days=1), strict_max=True
        ),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=[entity, ts]),
    ]
    for m in spec.metrics:
        suite.append(gxe.ExpectColumnValuesToBeOfType(column=m.name, type_=_SPARK_TYPE_NAMES[m.dtype]))
        if m.max_null_share < 1:
            suite.append(gxe.ExpectColumnValuesToNotBeNull(column=m.name, mostly=1 - m.max_null_share))
        low = m.min if m.min > -float("inf") else None
        high = m.max if m.max < float("inf") else None
        if low is not None or high is not None:
            suite.append(gxe.ExpectColumnValuesToBeBetween(column=m.name, min_value=low, max_value=high))
        if m.dtype in ("double", "float"):
            # Spark's NaN is not null and compares above every number: ask for it explicitly.
            suite.append(
                gxe.UnexpectedRowsExpectation(
                    unexpected_rows_query=(
                        f"SELECT * FROM {{batch}} WHERE isnan(`{m.name}`) OR abs(`{m.name}`) = double('inf')"
                    ),
                    description=f"{m.name}: {_FINITE_RULE}",
                    meta={"column": m.name, "rule": _FINITE_RULE},
                )
            )
    return suite


def validate_partition(spark, settings, dataset: str, day: dt.date) -> str:
    """Validate the raw partition of ``dataset`` for ``day``; quarantine it and raise if it fails.

    Returns a one-line summary on success. Raises ``PartitionNotFound`` when the partition does
    not exist and ``ValidationFailed`` (after moving the partition to quarantine) when it breaks
    an expectation. The result is kept under ``validation/<dataset>/dt=<day>/`` either way.
    """
    from pyspark.errors import AnalysisException  # lazy: PySpark loads slowly; the CLI imports this module

    lake = Lake(settings.lake_root)
    spec = load_spec(settings.specs_dir, dataset)
    raw, quarantined = raw_partition(lake, spec, day), lake.partition("quarantine", dataset, day)
    if not lake.exists(raw, spark):
        hint = ""
        if lake.exists(quarantined, spark):
            hint = f" (it is quarantined at {quarantined}: fix it and move it back)"
        raise PartitionNotFound(f"raw partition {dataset} dt={day} does not exist at {raw}{hint}")

    started = time.monotonic()
    result, to_run, skipped, rows = None, [], [], None
    unreadable = _unreadable_file(lake, raw, spark)
    if unreadable is not None:
        name, reason = unreadable
        failures = [{
            "expectation": _READABLE, "column": None, "count": None, "file": name,
            "message": f"{_READABLE}: file {name} is not readable Parquet ({reason})",
        }]
    else:
        try:
            df = spark.read.parquet(raw)
        except AnalysisException as exc:  # e.g. a folder without parquet files
            reason = str(exc).splitlines()[0]
            failure = {"expectation": _READABLE, "column": None, "count": None}
            failures = [{**failure, "message": f"{_READABLE}: {reason}"}]
        else:
            result, to_run, skipped, failures, rows = _validate_frame(spec, dataset, day, df)

    quarantine = lake.quarantine_copy(dataset, day) if failures else None
    if failures:
        lake.move(raw, quarantine, spark)
    summary = {
        "dataset": dataset,
        "date": day.isoformat(),
        "success": not failures,
        "rows": rows,
        "expectations": len(to_run),
        "failures": failures,
        "skipped": skipped,
        "partition": quarantine if failures else raw,
        "duration_s": round(time.monotonic() - started, 3),
    }
    _keep_result(lake, lake.partition("validation", dataset, day), summary, result)
    if failures:
        reasons = "; ".join(f["message"] for f in failures)
        raise ValidationFailed(
            f"{dataset} dt={day} failed validation: {reasons}; partition moved to {quarantine}"
        )
    return f"valid: {rows} rows, {len(to_run)} expectations"


def _unreadable_file(lake: Lake, raw: str, spark) -> tuple[str, str] | None:
    """The first data file of the partition that is not readable Parquet, as (name in the partition, reason).

    Each file is read whole on a local lake (a truncated file fails at its footer, a corrupt one
    at its pages), one column of one row group at a time: the driver then holds at most one
    column chunk, whatever the partition's size (reading batches reads ahead, and held 0.4 GiB at
    5,000 entities against 0.15 GiB at 1,000; ``benchmarks/validate_memory.py``). On a Hadoop URI
    each file's footer and schema are read through Spark.
    """
    for path in lake.data_files(raw, spark):
        name = path[len(raw.rstrip("/")) + 1:] if path.startswith(raw.rstrip("/")) else path.rsplit("/", 1)[-1]
        try:
            if is_local(path):
                _read_by_column_chunk(local_path(path))
            else:
                spark.read.parquet(path).schema  # noqa: B018 - reading the footer is the check
        except Exception as exc:  # pyarrow's and Spark's errors for a broken file have no common base
            reason = " ".join(str(exc).split())[:200] or type(exc).__name__
            return name, reason
    return None


def _read_by_column_chunk(path) -> None:
    """Decode every page of the Parquet file at ``path``, one column chunk at a time."""
    import pyarrow.parquet as pq  # lazy: pyarrow loads slowly; the CLI imports this module

    parquet = pq.ParquetFile(path)
    for group in range(parquet.metadata.num_row_groups):
        for column in parquet.schema_arrow.names:
            parquet.read_row_group(group, columns=[column])


def _validate_frame(spec: DatasetSpec, dataset: str, day: dt.date, df):
    """The suite on a readable partition: (GE result, run, skipped, failures, row count)."""
    result, to_run, skipped, rows = _evaluate(build_suite(spec, day), dataset, day, df)
    order = {e.id: i for i, e in enumerate(to_run)}
    outcomes = sorted(result.results, key=lambda r: order.get(r.expectation_config.id, len(order)))
    failures = [_failure(r) for r in outcomes if not r.success]
    return result, to_run, skipped, failures, rows


def _evaluate(expectations: list, dataset: str, day: dt.date, df):
    """Run the runnable part of the suite on ``df``; returns (GE result, run, skipped, row count).

    The suite runs first for pass or fail alone (GE's ``BOOLEAN_ONLY``: half the Spark jobs of a
    full result, ``benchmarks/validation_cost.py``), with the metrics' NaN and infinity checks as
    one query (:func:`_screening`). Only a partition that fails runs the suite again in full
    (``SUMMARY``), each check on its own, for the columns, counts and sample values its messages
    and report name.

    The frame is not cached: each of the suite's Spark jobs reads only the Parquet columns it
    needs, and building the cache cost more than it saved (a first validation of the 1,000-entity
    night in a new session 22.5-23.1 CPU-s against 27.8-28.1 cached, later ones equal;
    ``benchmarks/README.md``).
    """
    schema = {f.name: type(f.dataType).__name__ for f in df.schema.fields}
    to_run, skipped = _runnable(expectations, schema)
    screen = _screening(to_run)
    result = _run_suite(dataset, day, screen, df, "BOOLEAN_ONLY")
    if result.success:
        to_run = screen
    else:
        to_run = [copy.copy(e) for e in to_run]  # an expectation belongs to one suite: GE's copies drop it
        result = _run_suite(dataset, day, to_run, df, "SUMMARY")
    rows = next(
        (r.result.get("observed_value") for r in result.results if r.expectation_config.type == _ROW_COUNT),
        None,
    )
    return result, to_run, skipped, df.count() if rows is None else rows


def _screening(expectations: list) -> list:
    """``expectations`` with the per-column NaN and infinity checks merged into one, in the place
    of the first: each is a query of its own, a Spark job each, and merging the 8 of an 8-metric
    spec saved a quarter of a warm night's validation (``benchmarks/README.md``, "Scale")."""
    import great_expectations.expectations as gxe  # lazy: Great Expectations takes seconds to import

    finite = [e for e in expectations if e.meta and e.meta.get("rule") == _FINITE_RULE and "column" in e.meta]
    if len(finite) < 2:
        return expectations
    columns = [e.meta["column"] for e in finite]
    merged = gxe.UnexpectedRowsExpectation(
        unexpected_rows_query="SELECT * FROM {batch} WHERE "
        + " OR ".join(f"isnan(`{c}`) OR abs(`{c}`) = double('inf')" for c in columns),
        description=f"{', '.join(columns)}: {_FINITE_RULE}",
        meta={"columns": columns, "rule": _FINITE_RULE},
    )
    merged_ids = {id(e) for e in finite}
    at = next(i for i, e in enumerate(expectations) if id(e) in merged_ids)  # no merged one before it
    out = [e for e in expectations if id(e) not in merged_ids]
    out.insert(at, merged)
    return out


def _columns_of(expectation) -> list[str]:
    """The columns an expectation reads (the NaN check names its column in ``meta``)."""
    kwargs = expectation.configuration.kwargs
    if "column" in kwargs:
        return [kwargs["column"]]
    if "column_list" in kwargs:
        return list(kwargs["column_list"])
    return [expectation.meta["column"]] if expectation.meta and "column" in expectation.meta else []


def _runnable(expectations: list, schema: dict[str, str]) -> tuple[list, list[dict]]:
    """Split the suite into what can run on a frame with ``schema`` and what is skipped (and why).

    A column's expected type comes from the suite's own type expectations; value expectations
    run only on columns present with that type, type expectations only on present columns.
    """
    expected = {
        e.column: e.type_ for e in expectations if e.expectation_type == "expect_column_values_to_be_of_type"
    }
    run, skipped = [], []
    for e in expectations:
        cols = _columns_of(e)
        missing = [c for c in cols if c not in schema]
        if e.expectation_type == "expect_column_values_to_be_of_type":
            bad = missing
        else:
            bad = missing + [c for c in cols if c in schema and schema[c] != expected.get(c, schema[c])]
        if bad:
            why = "missing" if missing else f"is {schema[bad[0]]}, expected {expected[bad[0]]}"
            skipped.append(
                {"expectation": e.expectation_type, "column": ",".join(cols), "reason": f"{bad[0]} {why}"}
            )
        else:
            run.append(e)
    return run, skipped


def _run_suite(dataset: str, day: dt.date, expectations: list, df, result_format: str):
    """Run ``expectations`` on the Spark frame ``df`` in an ephemeral GE context, with GE's
    ``result_format`` (how much of each result is computed)."""
    import great_expectations as gx  # lazy: Great Expectations takes seconds to import
    from great_expectations.data_context.types.base import (  # lazy: as above
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    context = gx.get_context(
        mode="ephemeral",
        project_config=DataContextConfig(
            store_backend_defaults=InMemoryStoreBackendDefaults(),
            analytics_enabled=False,
            progress_bars=ProgressBarsConfig(globally=False),
        ),
    )
    batch = (
        context.data_sources.add_spark("fleetwatch_lake")
        .add_dataframe_asset(f"raw_{dataset}")
        .add_batch_definition_whole_dataframe(f"dt={day}")
    )
    suite = context.suites.add(gx.ExpectationSuite(name=f"{dataset}_raw", expectations=expectations))
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{dataset}_raw_dt={day}", data=batch, suite=suite)
    )
    return definition.run(batch_parameters={"dataframe": df}, result_format=result_format)


def _failure(outcome) -> dict:
    """One failed expectation as expectation, column, count and a readable message."""
    config = outcome.expectation_config
    kind, kwargs, res = config.type, config.kwargs, outcome.result
    meta = config.meta or {}
    column = kwargs.get("column") or ",".join(kwargs.get("column_list") or []) or meta.get("column")
    count = None
    if outcome.exception_info.get("raised_exception"):
        detail = f"could not be evaluated: {outcome.exception_info.get('exception_message')}"
    elif kind == "expect_table_columns_to_match_set":
        mismatch = res.get("details", {}).get("mismatched", {})
        missing, extra = mismatch.get("missing", []), mismatch.get("unexpected", [])
        column, count = ",".join(missing + extra), len(missing) + len(extra)
        detail = "; ".join(
            part for part in (
                f"missing column(s) {', '.join(missing)}" if missing else "",
                f"unexpected column(s) {', '.join(extra)}" if extra else "",
            ) if part
        )
    elif kind == _NOT_NULL:
        count = res.get("unexpected_count")
        allowed = 1 - (kwargs.get("mostly") or 1)
        share = (res.get("unexpected_percent") or 0) / 100
        detail = f"{count} null values, a share of {share:.2%} where at most {allowed:.2%} is allowed (max_null_share)"
    elif kind == _ROW_COUNT:
        count = res.get("observed_value")
        detail = f"{count} rows, at least {kwargs.get('min_value')} required"
    elif kind == "expect_column_values_to_be_of_type":
        detail = f"type is {res.get('observed_value')}, expected {kwargs.get('type_')}"
    elif kind == "unexpected_rows_expectation":
        count = res.get("observed_value")
        detail = f"{count} rows ({meta.get('rule', 'unexpected rows')})"
    else:
        count = res.get("unexpected_count")
        detail = f"{count} rows"
    where = f" on {column}" if column else ""
    return {"expectation": kind, "column": column, "count": count, "message": f"{kind}{where}: {detail}"}


def _keep_result(lake: Lake, final: str, summary: dict, result) -> None:
    """Write ``result.json`` (summary plus GE's result) and GE's HTML page as one partition."""
    from great_expectations.render.renderer import ValidationResultsPageRenderer  # lazy: Great Expectations is slow
    from great_expectations.render.view import DefaultJinjaPageView  # lazy: as above

    staging = lake.staging_path(final)
    ge_result = result.to_json_dict() if result is not None else None
    try:
        report = {**summary, "great_expectations": ge_result}
        lake.write_text(f"{staging}/result.json", json.dumps(report, indent=2, default=str))
        if result is not None:
            page = ValidationResultsPageRenderer().render(result)
            lake.write_text(f"{staging}/report.html", DefaultJinjaPageView().render(page))
        lake.publish(staging, final)
    except BaseException:
        lake.discard(staging)
        raise
