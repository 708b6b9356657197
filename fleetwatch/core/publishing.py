"""Publish one partition's incidents from the lake to the alerts table."""

from __future__ import annotations

import datetime as dt

from fleetwatch.core.alerts_store import AlertsStore
from fleetwatch.core.incident_batches import ParquetBatches, SparkBatches
from fleetwatch.core.lake import Lake, is_local, local_path
from fleetwatch.core.settings import Settings
from fleetwatch.core.specs import load_spec


def publish_alerts(settings: Settings, dataset: str, day: dt.date, spark=None) -> int:
    """Replace the alerts of ``(dataset, day)`` with the incidents partition; returns their count.

    The partition is read ``settings.publish_batch_rows`` incidents at a time (pyarrow; a lake on
    a Hadoop URI, ``s3a://``, through ``spark``), so the driver holds one batch however many
    alerts the night raised. An empty partition clears that day's alerts. An incident that
    continues the previous night's alert of its entity (at most the incident gap plus one
    sampling interval after it, the rule that joins flagged points) extends that alert.
    """
    lake = Lake(settings.lake_root)
    path = lake.partition("incidents", dataset, day)
    lake.require(path, f"incidents partition of {dataset} for {day}", spark)
    if spark is None and is_local(path):
        incidents = ParquetBatches(local_path(path), settings.publish_batch_rows)
    else:
        incidents = SparkBatches(spark.read.parquet(path), settings.publish_batch_rows)
    spec = load_spec(settings.specs_dir, dataset)
    step = dt.timedelta(minutes=spec.incident_gap(settings.incident_gap_minutes), seconds=spec.sampling_seconds)
    return AlertsStore(settings.alerts_db_url).publish_partition(
        dataset, day, incidents, carry_step=step, sampling_seconds=spec.sampling_seconds
    )
