"""The offline store: the few ways jobs read raw rows and feature partitions.

Jobs ask the store for data by dataset, view and day and never build lake paths themselves.
Feature partitions live at ``features/<dataset>/<view.ref>/dt=YYYY-MM-DD``; the tasks that compute
them write them (``feature_store.partition_writer``), atomically, so a rerun replaces a partition
whole and a failed write leaves the old one intact.
"""

from __future__ import annotations

import datetime as dt

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from feature_store.views import FeatureView
from fleetwatch.core.errors import FleetWatchError, PartitionNotFound
from fleetwatch.core.lake import Lake
from fleetwatch.core.raw_location import raw_partition
from fleetwatch.core.specs import SPARK_TYPES, DatasetSpec


def day_start(day: dt.date) -> dt.datetime:
    """Midnight UTC at the start of ``day`` (partitions are UTC days)."""
    return dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)


class OfflineStore:
    """Reads raw partitions with lookback and feature view partitions of a lake."""

    def __init__(self, spark: SparkSession, lake: Lake):
        self.spark = spark
        self.lake = lake

    def read_raw_with_lookback(self, spec: DatasetSpec, view: FeatureView, day: dt.date) -> DataFrame:
        """Raw rows of ``day`` plus the last ``view.lookback_minutes`` of the day before.

        The day before is optional (the first partition of a dataset has none); ``day`` itself
        must exist, else ``PartitionNotFound`` names the dataset, the date and the path.
        """
        path = raw_partition(self.lake, spec, day)
        if not self.lake.exists(path, self.spark):
            quarantined = self.lake.exists(self.lake.partition("quarantine", spec.name, day), self.spark)
            why = "it was quarantined by validation" if quarantined else "it never landed"
            raise PartitionNotFound(f"dataset {spec.name!r}: raw partition dt={day} does not exist at {path} ({why})")
        start = day_start(day)
        rows = self._read_raw(spec, day, path)
        previous = day - dt.timedelta(days=1)
        prev_path = raw_partition(self.lake, spec, previous)
        if self.lake.exists(prev_path, self.spark):
            ts = F.col(spec.timestamp_column)
            since = start - dt.timedelta(minutes=view.lookback_minutes)
            tail = self._read_raw(spec, previous, prev_path).where((ts >= F.lit(since)) & (ts < F.lit(start)))
            rows = tail.unionByName(rows)
        return rows

    def available_days(self, dataset: str, view: FeatureView) -> list[dt.date]:
        """Days that have a feature partition of ``view``, oldest first."""
        return self.lake.days(self.lake.features(dataset, view.ref), self.spark)

    def read_features(self, dataset: str, view: FeatureView, days: list[dt.date]) -> DataFrame:
        """Feature rows of the given days that exist, with their partition date as column ``dt``.

        Days without a partition are skipped (``available_days`` tells which exist); if none of
        them exists, ``PartitionNotFound`` names the dataset, the view and the days asked for.
        """
        base = self.lake.features(dataset, view.ref)
        present = sorted(set(days) & set(self.available_days(dataset, view)))
        if not present:
            asked = ", ".join(str(d) for d in sorted(days)) or "none"
            raise PartitionNotFound(
                f"dataset {dataset!r}: no feature partition of {view.ref} under {base} for days {asked}: "
                "run `fleetwatch features` for them first"
            )
        paths = [self.lake.features(dataset, view.ref, d) for d in present]
        frame = self.spark.read.option("basePath", base).parquet(*paths)
        return frame.withColumn("dt", F.col("dt").cast("date"))

    def _read_raw(self, spec: DatasetSpec, day: dt.date, path: str) -> DataFrame:
        frame = self.spark.read.parquet(path)
        types = dict(frame.dtypes)
        missing = [c for c in spec.columns if c not in types]
        if missing:
            raise FleetWatchError(
                f"dataset {spec.name!r}: raw partition dt={day} at {path} lacks columns of the spec: {', '.join(missing)}"
            )
        ts = spec.timestamp_column
        if types[ts] not in ("timestamp", "timestamp_ntz"):
            raise FleetWatchError(
                f"dataset {spec.name!r}: raw partition dt={day} column {ts!r} is {types[ts]}, not a timestamp"
            )
        metrics = [F.col(m.name).cast(SPARK_TYPES[m.dtype]).alias(m.name) for m in spec.metrics]
        return frame.select(spec.entity_column, F.col(ts).cast("timestamp").alias(ts), *metrics)
