"""The feature step of a night: raw partition (with lookback) in, feature partition out."""

from __future__ import annotations

import datetime as dt

from pyspark.sql import SparkSession

from feature_store.offline_store import OfflineStore
from feature_store.partition_writer import write_features_from_tasks
from feature_store.views import view_for
from fleetwatch.core.lake import Lake
from fleetwatch.core.settings import Settings
from fleetwatch.core.specs import load_spec


def build_features(spark: SparkSession, settings: Settings, dataset: str, day: dt.date) -> str:
    """Compute the dataset's default feature view for ``day`` and write it; returns a summary.

    The result depends only on the raw partitions of ``day`` and the day before (its last
    ``lookback_minutes``), so a rerun or a backfill in any order gives the same partition, and it
    replaces the partition whole. A missing raw partition raises ``PartitionNotFound`` and writes
    nothing. The tasks that compute the features write them (``feature_store.partition_writer``).
    """
    spec = load_spec(settings.specs_dir, dataset)
    view = view_for(spec)
    store = OfflineStore(spark, Lake(settings.lake_root))
    raw = store.read_raw_with_lookback(spec, view, day)
    path, rows = write_features_from_tasks(spark, store.lake, spec.name, view, day, raw, settings.spark_tasks_per_slot)
    return f"{rows} feature rows of {view.ref} ({len(view.feature_columns)} features) written to {path}"
