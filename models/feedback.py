"""User feedback: the alerts users labelled, and the feature rows inside them.

Labels reach training in two ways: rows inside alerts labelled true are left out of the training
window (an anomaly must not become normal), and alerts labelled false raise their entities'
thresholds (``models.promotion.raise_thresholds``).
"""

from __future__ import annotations

import datetime as dt

import pandas as pd
from pyspark.sql import functions as F

from fleetwatch.core.alerts_store import AlertsStore
from fleetwatch.core.errors import FleetWatchError
from fleetwatch.core.settings import Settings
from fleetwatch.core.specs import DatasetSpec
from models.frames import ENTITY, TS, canonical


def labelled_alerts(settings: Settings, dataset: str, value: bool | None, days: list[dt.date]) -> pd.DataFrame:
    """Alerts of ``days`` labelled ``value`` (either label when None); empty without a database."""
    store = AlertsStore(settings.alerts_db_url)
    try:
        frames = [store.labelled(dataset, v) for v in ((True, False) if value is None else (value,))]
    except FleetWatchError:
        return pd.DataFrame(columns=["id", "entity_id", "dt", "start_ts", "end_ts", "label"])
    alerts = pd.concat(frames, ignore_index=True)
    return alerts[pd.to_datetime(alerts["dt"]).dt.date.isin(set(days))].reset_index(drop=True)


def alert_rows(store, spec: DatasetSpec, view, alerts: pd.DataFrame) -> pd.DataFrame:
    """Canonical feature rows inside the given alerts' spans, with the alert's ``id`` (few rows)."""
    if alerts.empty:
        return pd.DataFrame(columns=["id", ENTITY, TS, *view.feature_columns])
    days = sorted({pd.Timestamp(d).date() for d in alerts["dt"]})
    spark = store.spark
    spans = spark.createDataFrame(alerts[["id", "entity_id", "start_ts", "end_ts"]].rename(columns={"entity_id": "_e"}))
    df = canonical(store.read_features(spec.name, view, days), spec).drop("dt")
    cond = (F.col(ENTITY) == F.col("_e")) & (F.col(TS) >= F.col("start_ts")) & (F.col(TS) <= F.col("end_ts"))
    rows = df.join(F.broadcast(spans), cond).drop("_e", "start_ts", "end_ts").toPandas()
    return rows.sort_values(["id", TS]).reset_index(drop=True)


def exclude_confirmed_anomalies(settings: Settings, spec: DatasetSpec, features_df):
    """Drop rows inside alerts users labelled true, so anomalies do not become normal."""
    try:
        confirmed = AlertsStore(settings.alerts_db_url).labelled(spec.name, True)
    except FleetWatchError:
        return features_df
    if confirmed.empty:
        return features_df
    spark = features_df.sparkSession
    spans = spark.createDataFrame(confirmed[["entity_id", "start_ts", "end_ts"]])
    spans = spans.withColumnRenamed("entity_id", "_e")
    ent, ts = F.col(spec.entity_column), F.col(spec.timestamp_column)
    cond = (ent == F.col("_e")) & (ts >= F.col("start_ts")) & (ts <= F.col("end_ts"))
    return features_df.join(F.broadcast(spans), cond, "left_anti")
