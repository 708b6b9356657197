"""The feature step of a night: raw partition (with lookback) in, feature partition out."""

from __future__ import annotations

import datetime as dt

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from feature_store.offline_store import OfflineStore, day_start
from feature_store.transforms import compute_features
from feature_store.views import view_for
from fleetwatch.core.lake import Lake
from fleetwatch.core.settings import Settings
from fleetwatch.core.specs import load_spec


def build_features(spark: SparkSession, settings: Settings, dataset: str, day: dt.date) -> str:
    """Compute the dataset's default feature view for ``day`` and write it; returns a summary.

    The result depends only on the raw partitions of ``day`` and the day before (its last
    ``lookback_minutes``), so a rerun or a backfill in any order gives the same partition, and it
    replaces the partition whole. A missing raw partition raises ``PartitionNotFound`` and writes
    nothing.
    """
    spec = load_spec(settings.specs_dir, dataset)
    view = view_for(spec)
    store = OfflineStore(spark, Lake(settings.lake_root))
    raw = store.read_raw_with_lookback(spec, view, day)
    start = day_start(day)
    ts = F.col(view.timestamp_column)
    features = compute_features(raw, view).where((ts >= F.lit(start)) & (ts < F.lit(start + dt.timedelta(days=1))))
    path = store.write_features(spec, view, day, features)
    rows = spark.read.parquet(path).count()
    return f"{rows} feature rows of {view.ref} ({len(view.feature_columns)} features) written to {path}"
