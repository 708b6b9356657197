"""Feature partitions written by the Spark tasks that compute them.

Spark shuffles the raw rows by entity and sorts each task's rows by entity and time; each task
computes its entities' features in pandas (:func:`feature_store.transforms.entity_feature_arrays`)
and writes them with pyarrow as one Parquet file in the partition's staging folder, returning one
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
from collections.abc import Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from feature_store.offline_store import day_start
from feature_store.transforms import entity_feature_arrays
from feature_store.views import FeatureView
from fleetwatch.core.lake import Lake, write_bytes
from fleetwatch.core.settings import TASKS_PER_SLOT
from fleetwatch.core.spark import task_slots
from fleetwatch.core.task_files import ENTITIES, TaskFile, arrow_table_of, entities_manifest, keep_only

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
    spark: SparkSession, lake: Lake, dataset: str, view: FeatureView, day: dt.date, raw: DataFrame,
    tasks_per_slot: int = TASKS_PER_SLOT,
) -> tuple[str, int]:
    """Compute ``view``'s features of ``raw`` (the day's rows and its lookback) in the tasks and
    write the rows of ``day`` (a UTC day) as the view's partition, atomically; returns its path and
    row count.

    Rows without an entity or a timestamp are dropped (no window can hold them). A failed write
    leaves the previous partition as it was; files of task attempts whose results Spark did not
    keep are removed before the partition is moved into place.

    The rows are shuffled into ``tasks_per_slot`` tasks a task slot, a number Spark's adaptive
    execution keeps: it merges the partitions of a ``repartition(column)`` by size, which on 2
    cores left three tasks, one of them twice the others', and the step's second half on one core.
    """
    from pyspark.sql.pandas.types import to_arrow_type

    entity, ts = view.entity_column, view.timestamp_column
    schema = arrow_schema(view, to_arrow_type(raw.schema[entity].dataType))
    final = lake.features(dataset, view.ref, day)
    staging = lake.staging_path(final, spark)
    start = pd.Timestamp(day_start(day).replace(tzinfo=None))  # the tasks' timestamps are naive UTC
    window = (start, start + pd.Timedelta(days=1))
    rows = raw.select(entity, ts, *view.metrics).where(F.col(ts).isNotNull() & F.col(entity).isNotNull())
    tasks = rows.repartition(tasks_per_slot * task_slots(spark), entity).sortWithinPartitions(entity, ts)

    def task(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        written = _write_file(batches, view, schema, staging, window)
        if len(written):
            yield written

    try:
        meta = tasks.mapInPandas(task, _META_SCHEMA).toPandas()
        manifest = entities_manifest(meta, view=view.ref, day=day.isoformat())
        keep_only(staging, {f["file"] for f in manifest["files"]}, schema)
        write_bytes(f"{staging}/{ENTITIES}", json.dumps(manifest, indent=1).encode())
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
    """One task's entities' features as one Parquet file in ``staging``; one row per entity
    written: entity, file, rows."""
    entity, ts = view.entity_column, view.timestamp_column
    out = TaskFile(staging, schema, dictionary=[entity])
    try:
        for rows in whole_entities(batches, entity):
            entities, stamps, features = entity_feature_arrays(rows, view)  # in time order: the day is one slice
            first, end = stamps.searchsorted(window)
            if first == end:  # rows in the lookback only
                continue
            day = {entity: entities[first:end], ts: stamps[first:end], **{c: v[first:end] for c, v in features.items()}}
            out.append_table(rows[entity].iloc[0], arrow_table_of(day, schema))  # naive timestamps are UTC
    finally:
        out.close()
    return out.meta()
