"""User feedback: the alerts users labelled, and the feature rows inside them.

Labels reach training in three ways: rows inside alerts labelled true are left out of the training
window (an anomaly must not become normal), alerts labelled false raise their entities'
thresholds (``models.promotion.raise_thresholds``), and persistent alerts labelled ``new_normal``
make their entities adapt to the new level (``models.adaptation``).

Labels that cannot be read stop training with one line: a model trained as if nobody had labelled
anything would quietly learn confirmed anomalies as normal. ``settings.train_feedback = False``
(``fleetwatch train --no-feedback``, ``FLEETWATCH_TRAIN_FEEDBACK=false``) is the explicit way
round: no label is read and the alerts database is not touched.
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


class FeedbackUnavailable(FleetWatchError):
    """The labels users gave alerts could not be read for training."""


def read_labels(settings: Settings, dataset: str, value: bool) -> pd.DataFrame | None:
    """Alerts of ``dataset`` labelled ``value``; None when training runs without feedback.

    Raises ``FeedbackUnavailable`` (one line: the database, why, what to do) when the labels
    cannot be read.
    """
    if not settings.train_feedback:
        return None
    try:
        return AlertsStore(settings.alerts_db_url).labelled(dataset, value)
    except FleetWatchError as exc:
        raise FeedbackUnavailable(
            f"the alert labels of {dataset} could not be read for training ({exc}); fix the alerts database, "
            "or train without labels with `fleetwatch train --no-feedback` (FLEETWATCH_TRAIN_FEEDBACK=false)"
        ) from None


def labelled_alerts(settings: Settings, dataset: str, value: bool | None, days: list[dt.date]) -> pd.DataFrame:
    """Alerts of ``days`` labelled ``value`` (either label when None); empty without feedback."""
    frames = [read_labels(settings, dataset, v) for v in ((True, False) if value is None else (value,))]
    frames = [f for f in frames if f is not None]
    if not frames:
        return pd.DataFrame(columns=["id", "entity_id", "dt", "start_ts", "end_ts", "label"])
    alerts = pd.concat(frames, ignore_index=True)
    if value is False:  # a new normal raises no threshold: its entity adapts to it (models.adaptation)
        alerts = alerts[~alerts["new_normal"].eq(True)]
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
    confirmed = read_labels(settings, spec.name, True)
    if confirmed is None or confirmed.empty:
        return features_df
    spark = features_df.sparkSession
    spans = spark.createDataFrame(confirmed[["entity_id", "start_ts", "end_ts"]])
    spans = spans.withColumnRenamed("entity_id", "_e")
    ent, ts = F.col(spec.entity_column), F.col(spec.timestamp_column)
    cond = (ent == F.col("_e")) & (ts >= F.col("start_ts")) & (ts <= F.col("end_ts"))
    return features_df.join(F.broadcast(spans), cond, "left_anti")
