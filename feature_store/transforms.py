"""Feature computation: per-entity, time-based rolling windows, in pandas inside Spark tasks.

A window of ``w`` minutes holds the rows in ``(t - w min, t]`` whatever the gaps in the data.
Spark groups the rows by entity and hands each entity's rows to :func:`entity_features` as one
pandas frame (``applyInPandas``), so the work spreads over the cluster's tasks while each window
is computed incrementally: Spark SQL's sliding range frames re-aggregate every frame row by row,
4 to 7 times the CPU for the default view (``benchmarks/feature_engines.py``; figures in
``benchmarks/README.md``, "Scale").
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import types as T

from feature_store.views import FeatureView


def compute_features(df: DataFrame, view: FeatureView) -> DataFrame:
    """Features of every row of ``df``: the entity, the timestamp, then ``view.feature_columns``.

    Rows without a timestamp are dropped (no window can hold them); the rest are as
    :func:`entity_features` says. Every feature column is a double.
    """
    entity, ts = view.entity_column, view.timestamp_column
    fields = {f.name: f for f in df.schema.fields}
    schema = T.StructType(
        [
            T.StructField(entity, fields[entity].dataType),
            T.StructField(ts, T.TimestampType()),
            *(T.StructField(c, T.DoubleType()) for c in view.feature_columns),
        ]
    )
    rows = df.select(entity, ts, *view.metrics).where(df[ts].isNotNull())
    return rows.groupBy(entity).applyInPandas(lambda g: entity_features(g, view), schema)


def entity_features(rows: pd.DataFrame, view: FeatureView) -> pd.DataFrame:
    """One entity's features from its raw rows (any order): entity, timestamp, feature columns,
    as :func:`entity_feature_arrays` computes them."""
    entities, stamps, out = entity_feature_arrays(rows, view)
    frame = pd.DataFrame(out, columns=view.feature_columns)
    frame.insert(0, view.timestamp_column, stamps)
    frame.insert(0, view.entity_column, entities)
    return frame


def entity_feature_arrays(rows: pd.DataFrame, view: FeatureView) -> tuple[np.ndarray, pd.DatetimeIndex, dict[str, np.ndarray]]:
    """One entity's features from its raw rows (any order), in time order: the rows' entity
    values, their timestamps and each feature column as an array. Arrays, not a frame: a task
    writing them hands them to Arrow as they are (a frame of 88 columns cost more to build and
    to take apart than the windows cost to compute).

    Per metric: the value; for each window its mean, sample standard deviation (0 while the
    window holds one value) and z-score (0 where the standard deviation is 0); and the rate of
    change per minute since the previous row (0 on the first row and between rows that share a
    timestamp). Rows that share a timestamp share their windows, as in SQL range frames. Windows
    skip missing values; a missing value gives a missing z-score (where the window varies) and
    rate (where time has passed), and so does the rate of the row after it.
    """
    entity, ts = view.entity_column, view.timestamp_column
    rows = rows.sort_values(ts, kind="stable")
    stamps = pd.DatetimeIndex(rows[ts])
    values = rows[list(view.metrics)].astype("float64").set_axis(stamps)
    minutes = np.diff(stamps.asi8, prepend=stamps.asi8[:1]) / 60e9
    rate = values.diff().to_numpy() / np.where(minutes > 0, minutes, np.nan)[:, None]
    rate = np.where(minutes[:, None] > 0, rate, 0.0)

    stats = {}
    for w in view.windows_minutes:
        window = values.rolling(f"{w}min")
        mean, std = window.mean(), window.std().fillna(0.0)
        if stamps.has_duplicates:  # peers share the frame of the last of them
            mean, std = (s.groupby(level=0).transform("last") for s in (mean, std))
        stats[w] = mean.to_numpy(), std.to_numpy()

    x = values.to_numpy()
    out: dict[str, np.ndarray] = {}
    for i, m in enumerate(view.metrics):
        out[m] = x[:, i]
        for w in view.windows_minutes:
            mean, std = stats[w][0][:, i], stats[w][1][:, i]
            out[f"{m}__mean_{w}m"], out[f"{m}__std_{w}m"] = mean, std
            with np.errstate(divide="ignore", invalid="ignore"):
                out[f"{m}__z_{w}m"] = np.where(std > 0, (x[:, i] - mean) / std, 0.0)
        out[f"{m}__roc"] = rate[:, i]
    return rows[entity].to_numpy(), stamps, out
