"""Feature partitions written by the Spark tasks that compute them.

Spark shuffles the raw rows by entity and sorts each task's rows by entity and time; each task
computes its entities' features in pandas (:func:`feature_store.transforms.entity_features`) and
writes them with pyarrow as one Parquet file in the partition's staging folder, returning one
small row per entity. The features never pass through the JVM: handing 88 double columns back to
Spark as Arrow batches and writing them there took about 1.6 times the CPU of the whole step
written this way (``benchmarks/README.md``, "Features written by their tasks").

Every file holds whole entities, sorted by entity and time. The partition's ``_entities.json``
(:data:`ENTITIES`) names each file with its entities and row counts, so scoring can read a file
straight from a task, without a shuffle by entity. Spark and pandas read the partition as any
Parquet folder: names that begin with ``_`` or ``.`` are hidden from them.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from feature_store.offline_store import day_start
from feature_store.transforms import entity_features
from feature_store.views import FeatureView
from fleetwatch.core.lake import Lake, arrow_filesystem

ENTITIES = "_entities.json"
FORMAT = 1
ROW_GROUP_ROWS = 65_536  # a few dozen entities of a day at one row a minute
_META_SCHEMA = "entity string, file string, rows long"


def arrow_schema(view: FeatureView, entity_type):
    """The partition's Arrow schema: entity (``entity_type``, an Arrow type), UTC timestamp, doubles."""
    import pyarrow as pa

    return pa.schema(
        [
            pa.field(view.entity_column, entity_type),
            pa.field(view.timestamp_column, pa.timestamp("us", tz="UTC")),
            *(pa.field(c, pa.float64()) for c in view.feature_columns),
        ]
    )


def write_features_from_tasks(
    spark: SparkSession, lake: Lake, dataset: str, view: FeatureView, day: dt.date, raw: DataFrame
) -> tuple[str, int]:
    """Compute ``view``'s features of ``raw`` (the day's rows and its lookback) in the tasks and
    write the rows of ``day`` (a UTC day) as the view's partition, atomically; returns its path and
    row count.

    Rows without an entity or a timestamp are dropped (no window can hold them). A failed write
    leaves the previous partition as it was; files of task attempts whose results Spark did not
    keep are removed before the partition is moved into place.
    """
    from pyspark.sql.pandas.types import to_arrow_type

    entity, ts = view.entity_column, view.timestamp_column
    schema = arrow_schema(view, to_arrow_type(raw.schema[entity].dataType))
    final = lake.features(dataset, view.ref, day)
    staging = lake.staging_path(final, spark)
    start = pd.Timestamp(day_start(day).replace(tzinfo=None))  # the tasks' timestamps are naive UTC
    window = (start, start + pd.Timedelta(days=1))
    rows = raw.select(entity, ts, *view.metrics).where(F.col(ts).isNotNull() & F.col(entity).isNotNull())
    tasks = rows.repartition(entity).sortWithinPartitions(entity, ts)

    def task(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        written = _write_file(batches, view, schema, staging, window)
        if len(written):
            yield written

    try:
        meta = tasks.mapInPandas(task, _META_SCHEMA).toPandas()
        manifest = _manifest(meta, view, day)
        _keep_only(staging, {f["file"] for f in manifest["files"]}, schema)
        _write_bytes(f"{staging}/{ENTITIES}", json.dumps(manifest, indent=1).encode())
        lake.publish(staging, final, spark)
    except BaseException:
        lake.discard(staging, spark)
        raise
    return final, manifest["rows"]


def whole_entities(batches: Iterator[pd.DataFrame], column: str) -> Iterator[pd.DataFrame]:
    """Each entity's rows as one frame, from batches sorted by ``column``: an entity's rows may
    span batches, and are held until the next entity begins. Raises ``ValueError`` when an entity
    comes back after another (the batches were not sorted)."""
    held: list[pd.DataFrame] = []
    done: set = set()

    def complete(frames: list[pd.DataFrame]) -> pd.DataFrame:
        key = frames[0][column].iloc[0]
        if key in done:
            raise ValueError(f"rows of {column} {key!r} are not contiguous: the task's rows were not sorted by it")
        done.add(key)
        return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)

    for batch in batches:
        if batch.empty:
            continue
        codes, _ = pd.factorize(batch[column], sort=False)
        starts = np.concatenate([[0], np.flatnonzero(np.diff(codes)) + 1])
        if len(starts) != codes.max() + 1:
            raise ValueError(f"rows of {column} are not contiguous within a batch: the task's rows were not sorted by it")
        for i, begin in enumerate(starts):
            run = batch.iloc[begin : starts[i + 1] if i + 1 < len(starts) else len(batch)]
            if held and held[0][column].iloc[0] != run[column].iloc[0]:
                yield complete(held)
                held = []
            held.append(run)
    if held:
        yield complete(held)


def _write_file(batches: Iterator[pd.DataFrame], view: FeatureView, schema, staging: str, window) -> pd.DataFrame:
    """One task's entities' features as one Parquet file in ``staging`` (a hidden name first,
    renamed once complete); one row per entity written: entity, file, rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyspark import TaskContext

    entity, ts = view.entity_column, view.timestamp_column
    context = TaskContext.get()
    name = f"part-{context.partitionId() if context else 0:05d}-{uuid.uuid4().hex[:12]}.parquet"
    fs, base = arrow_filesystem(staging)
    tmp = f"{base}/.{name}.tmp"
    writer, pending, pending_rows, meta = None, [], 0, []

    def flush() -> None:
        nonlocal writer, pending_rows
        if writer is None:
            fs.create_dir(base, recursive=True)
            writer = pq.ParquetWriter(fs.open_output_stream(tmp), schema, use_dictionary=[entity], compression="snappy")
        writer.write_table(pa.concat_tables(pending))
        pending.clear()
        pending_rows = 0

    try:
        for rows in whole_entities(batches, entity):
            features = entity_features(rows, view)
            stamps = features[ts]
            features = features[(stamps >= window[0]) & (stamps < window[1])]
            if features.empty:  # rows in the lookback only
                continue
            features = features.assign(**{ts: features[ts].dt.tz_localize("UTC")})
            pending.append(pa.Table.from_pandas(features, schema=schema, preserve_index=False))
            pending_rows += len(features)
            meta.append((rows[entity].iloc[0], len(features)))
            if pending_rows >= ROW_GROUP_ROWS:
                flush()
        if pending:
            flush()
    finally:
        if writer is not None:
            writer.close()
    if writer is not None:
        fs.move(tmp, f"{base}/{name}")
    return pd.DataFrame({"entity": pd.Series([str(e) for e, _ in meta], dtype=object), "file": name,
                         "rows": pd.Series([n for _, n in meta], dtype="int64")})


def _manifest(meta: pd.DataFrame, view: FeatureView, day: dt.date) -> dict:
    """The partition's ``_entities.json``: files in name order, each with its entities in order."""
    repeated = meta["entity"][meta["entity"].duplicated()]
    if len(repeated):
        raise RuntimeError(f"entities written by two tasks: {', '.join(repeated.unique()[:5])}")
    files = [
        {"file": name, "rows": int(group["rows"].sum()), "entities": group["entity"].tolist(),
         "entity_rows": group["rows"].astype(int).tolist()}
        for name, group in meta.groupby("file", sort=True)
    ]
    return {"format": FORMAT, "view": view.ref, "day": day.isoformat(), "rows": int(meta["rows"].sum()), "files": files}


def _keep_only(staging: str, names: set[str], schema) -> None:
    """Remove from ``staging`` the files no kept task result names (a failed or repeated attempt's);
    with no file at all, write one empty file so that readers still find the partition's schema."""
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    fs, base = arrow_filesystem(staging)
    fs.create_dir(base, recursive=True)
    for info in fs.get_file_info(pafs.FileSelector(base)):
        if info.type == pafs.FileType.File and info.base_name not in names:
            fs.delete_file(info.path)
    if not names:
        with fs.open_output_stream(f"{base}/part-00000-empty.parquet") as out:
            pq.write_table(schema.empty_table(), out)


def _write_bytes(uri: str, data: bytes) -> None:
    fs, path = arrow_filesystem(uri)
    with fs.open_output_stream(path) as out:
        out.write(data)
