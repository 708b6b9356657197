"""``fleetwatch ingest files``: a team's CSV or Parquet files into the dataset's daily raw partitions.

Files may hold rows in any order, many entities or one (then named by the file, when the spec
says ``entity_from = "file_name"``). Every file is read and checked before anything is written; a
value that cannot be parsed is one error naming the file, the line, the column and the rule.
Rows are cut into UTC days and merged into the partitions already there (a row of the same
entity and timestamp is replaced), each day written whole through a staging folder and renamed
into place, so ingesting the same files twice gives the same partitions. Rows the spec does
not allow (out of range, NaN, duplicates) are written and counted, not dropped: validation
quarantines their partitions, as for any raw partition. A folder of ``dt=`` Parquet partitions
whose columns already are the spec's is read in place instead (the spec's ``raw_path``).
"""

from __future__ import annotations

from functools import reduce

from fleetwatch.core.datasets.dataset_init import in_place_fit
from fleetwatch.core.datasets.sources import (
    FILE_COL,
    ROW_COL,
    csv_headers,
    display_path,
    find_files,
    read_source,
    require_columns,
)
from fleetwatch.core.errors import FleetWatchError
from fleetwatch.core.lake import Lake
from fleetwatch.core.raw_location import raw_root
from fleetwatch.core.specs import SPARK_TYPES, DatasetSpec, load_spec, write_spec

_FLOAT = ("double", "float")
_EXT = r"(?i)\.(csv\.gz|csv|txt|tsv|parquet|pq|parq)$"
TS_RULE = "not a timestamp (ISO 8601, e.g. 2026-01-01 00:05:00 or 2026-01-01T00:05:00Z)"


def _fail(spec: DatasetSpec, csv: bool, row, column: str, rule: str, more: int) -> FleetWatchError:
    line = row[ROW_COL] + 1 if csv else row[ROW_COL]
    value = row[f"__src_{column}"]
    shown = "" if value is None else f" value {value!r}"
    tail = f" ({more} more bad rows)" if more else ""
    return FleetWatchError(
        f"{display_path(row[FILE_COL])} {'line' if csv else 'row'} {line}: column {column!r}{shown} {rule}; "
        f"nothing was ingested into {spec.name}{tail}"
    )


def _check_columns(spark, source, spec: DatasetSpec, headers) -> None:
    """Every file must hold the spec's columns (the entity too, unless files name their entity)."""
    from pyspark.sql import functions as F  # lazy: PySpark loads slowly

    needed = [c for c in spec.columns if not (c == spec.entity_column and spec.entity_from == "file_name")]
    if headers is not None:
        require_columns(headers, needed, spec.name)
        return
    frame = read_source(spark, source)
    absent = [c for c in needed if c not in frame.columns]
    if absent:
        raise FleetWatchError(f"{source.root}: no column {absent[0]!r} in any file; nothing was ingested into {spec.name}")
    counts = frame.groupBy(FILE_COL).agg(*[F.count(c).alias(c) for c in needed]).collect()
    for row in counts:
        empty = [c for c in needed if row[c] == 0]
        if empty:
            raise FleetWatchError(
                f"{display_path(row[FILE_COL])}: column {empty[0]!r} is missing or empty (rule: every file holds the "
                f"spec's columns); nothing was ingested into {spec.name}"
            )


def _typed(frame, spec: DatasetSpec):
    """``frame`` with the spec's columns parsed (``__src_*`` keep the text) and ``__bad_*`` flags."""
    from pyspark.sql import functions as F  # lazy: PySpark loads slowly

    types = dict(frame.dtypes)
    ent, ts = spec.entity_column, spec.timestamp_column
    if spec.entity_from == "file_name":
        name = F.url_decode(F.regexp_extract(F.col(FILE_COL), r"([^/]+)$", 1))
        frame = frame.withColumn(f"__src_{ent}", name).withColumn(ent, F.regexp_replace(name, _EXT, ""))
    else:
        frame = frame.withColumn(f"__src_{ent}", F.col(ent).cast("string")).withColumn(ent, F.trim(F.col(ent).cast("string")))
    bad = {ent: (F.col(ent).isNull() | (F.col(ent) == ""), "is empty (rule: every row names its entity)")}

    src_ts = F.col(ts).cast("string")
    if types.get(ts) == "string":
        parsed = F.trim(F.col(ts)).try_cast("timestamp")
    elif types.get(ts) in ("timestamp", "timestamp_ntz", "date"):
        parsed = F.col(ts).cast("timestamp")
    else:
        raise FleetWatchError(f"column {ts!r} is {types.get(ts)}, not timestamps: the spec {spec.name} needs timestamps there")
    frame = frame.withColumn(f"__src_{ts}", src_ts).withColumn(ts, parsed)
    bad[ts] = (F.col(ts).isNull(), f"is empty or {TS_RULE}")

    for m in spec.metrics:
        target = SPARK_TYPES[m.dtype]
        frame = frame.withColumn(f"__src_{m.name}", F.col(m.name))  # parsed and checked from here, never overwritten
        src = F.col(f"__src_{m.name}")
        text = F.trim(src.cast("string"))
        value = (text if types.get(m.name) == "string" else src).try_cast(target)
        empty = src.isNull() | (text == "")
        if m.dtype in _FLOAT:
            frame = frame.withColumn(m.name, F.when(empty, F.lit(float("nan")).cast(target)).otherwise(value))
            bad[m.name] = (~empty & value.isNull(), "is not a number")
        else:
            frame = frame.withColumn(m.name, value)
            bad[m.name] = (
                empty | value.isNull(),
                f"is empty or not an integer (rule: dtype {m.dtype} in the spec; make it double to allow decimals and gaps)",
            )
    for col, (cond, _) in bad.items():
        frame = frame.withColumn(f"__bad_{col}", cond)
    return frame, {c: rule for c, (_, rule) in bad.items()}


def _first_error(frame, spec: DatasetSpec, rules: dict[str, str], csv: bool) -> None:
    from pyspark.sql import functions as F  # lazy: PySpark loads slowly

    any_bad = reduce(lambda a, b: a | b, [F.col(f"__bad_{c}") for c in rules])
    bad = frame.where(any_bad).cache()
    try:
        rows = bad.orderBy(FILE_COL, ROW_COL).limit(1).collect()
        if rows:
            row = rows[0]
            column = next(c for c in rules if row[f"__bad_{c}"])
            raise _fail(spec, csv, row, column, rules[column], bad.count() - 1)
    finally:
        bad.unpersist()


def ingest_files(settings, name: str, paths: list[str], *, spark=None) -> dict:
    """Ingest ``paths`` (files or folders) into ``name``'s raw partitions; returns a summary."""
    spec = load_spec(settings.specs_dir, name)
    lake = Lake(settings.lake_root)
    if spark is None:
        from fleetwatch.core.spark import get_spark  # lazy: starting Spark takes seconds

        spark = get_spark(settings, "fleetwatch-ingest")
    source = find_files(list(paths), spark)
    if spec.raw_path:
        if source.layout == "hive-daily" and source.root == spec.raw_path.rstrip("/"):
            return {"dataset": name, "in_place": spec.raw_path, "days": _days(lake, spec, spark)}
        raise FleetWatchError(
            f"dataset {name} reads its raw partitions in place from {spec.raw_path} (raw_path in its spec): add files "
            "there, or remove raw_path from the spec to ingest copies into the lake"
        )
    if source.layout == "hive-daily":
        fits, _ = in_place_fit(source, spec, dict(read_source(spark, source, limit=1).dtypes))
        if fits:
            spec = spec.model_copy(update={"raw_path": source.root})
            write_spec(settings.specs_dir, spec)
            return {"dataset": name, "in_place": spec.raw_path, "days": _days(lake, spec, spark)}

    csv = source.format == "csv"
    headers = csv_headers(spark, source) if csv else None
    _check_columns(spark, source, spec, headers)
    frame, rules = _typed(read_source(spark, source, headers=headers), spec)
    frame = frame.cache()
    try:
        _first_error(frame, spec, rules, csv)
        return _write(spark, settings, lake, spec, source, frame)
    finally:
        frame.unpersist()


def _write(spark, settings, lake: Lake, spec: DatasetSpec, source, frame) -> dict:
    from pyspark.sql import functions as F  # lazy: PySpark loads slowly

    ent, ts = spec.entity_column, spec.timestamp_column
    rows = frame.select(*spec.columns).withColumn("dt", F.to_date(F.col(ts)))
    outside = [(F.col(m.name) < m.min) | (F.col(m.name) > m.max) | F.isnan(F.col(m.name)) for m in spec.metrics]
    flag = outside[0]
    for cond in outside[1:]:
        flag = flag | cond
    stats = rows.groupBy("dt").agg(
        F.count(F.lit(1)).alias("rows"), F.sum(F.coalesce(flag, F.lit(True)).cast("int")).alias("outside"),
        (F.count(F.lit(1)) - F.countDistinct(ent, ts)).alias("duplicates"),
    ).orderBy("dt").collect()
    days = [r["dt"] for r in stats]
    root = raw_root(lake, spec)
    existing = [d for d in days if lake.exists(f"{root}/dt={d.isoformat()}", spark)]
    merged = rows
    if existing:
        old = None
        for d in existing:
            part = spark.read.parquet(f"{root}/dt={d.isoformat()}").select(*spec.columns).withColumn("dt", F.lit(d))
            old = part if old is None else old.unionByName(part)
        kept = old.join(rows.select(ent, ts).distinct(), on=[ent, ts], how="left_anti")
        merged = rows.unionByName(kept.select(*rows.columns))
    staging = lake.staging_path(root)
    try:
        out = merged.repartition("dt").sortWithinPartitions("dt", ent, ts)
        out.write.partitionBy("dt").mode("overwrite").parquet(staging)
        for d in days:
            lake.publish(f"{staging}/dt={d.isoformat()}", f"{root}/dt={d.isoformat()}", spark)
    finally:
        lake.discard(staging, spark)
    flagged = {r["dt"].isoformat(): r["outside"] for r in stats if r["outside"]}
    dupes = {r["dt"].isoformat(): r["duplicates"] for r in stats if r["duplicates"]}
    return {
        "dataset": spec.name,
        "files": len(source.files),
        "rows": sum(r["rows"] for r in stats),
        "entities": frame.select(ent).distinct().count(),
        "partitions": len(days),
        "first_day": days[0].isoformat(),
        "last_day": days[-1].isoformat(),
        "merged_into_existing": [d.isoformat() for d in existing],
        "raw": root,
        # not dropped: validation quarantines these partitions until the rows are fixed
        "rows_outside_spec": flagged,
        "duplicate_rows": dupes,
    }


def _days(lake: Lake, spec: DatasetSpec, spark) -> list[str]:
    return [d.isoformat() for d in lake.days(raw_root(lake, spec), spark)]
