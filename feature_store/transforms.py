"""Feature computation: per-entity, time-based rolling windows in plain Spark SQL functions.

Windows are ranges over the timestamp in epoch seconds, so a window of ``w`` minutes holds the
rows in ``(t - w min, t]`` whatever the gaps in the data; every entity is one window partition,
so the work spreads over the cluster with no per-row Python.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from feature_store.views import FeatureView


def compute_features(df: DataFrame, view: FeatureView) -> DataFrame:
    """Features of every row of ``df``: the entity, the timestamp, then ``view.feature_columns``.

    The standard deviation is the sample one, 0 while a window holds a single row; the z-score is
    0 where the standard deviation is 0; the rate of change is 0 on an entity's first row (and
    where two rows share a timestamp). Every feature column is a double.
    """
    entity, ts = view.entity_column, view.timestamp_column
    seconds = F.unix_seconds(F.col(ts))
    by_entity = Window.partitionBy(entity).orderBy(seconds)

    stats: list[Column] = []
    for m in view.metrics:
        x = F.col(m).cast("double")
        stats.append(x.alias(m))
        for w in view.windows_minutes:
            frame = by_entity.rangeBetween(-(w * 60 - 1), 0)
            stats.append(F.avg(x).over(frame).alias(_tmp(m, "mean", w)))
            stats.append(F.coalesce(F.stddev_samp(x).over(frame), F.lit(0.0)).alias(_tmp(m, "std", w)))
        stats.append(F.lag(x).over(by_entity).alias(_tmp(m, "prev")))
    stats.append((seconds - F.lag(seconds).over(by_entity)).alias("__elapsed"))
    windowed = df.select(entity, ts, *stats)

    minutes = F.col("__elapsed") / 60.0
    out: list[Column] = []
    for m in view.metrics:
        x = F.col(m)
        out.append(x)
        for w in view.windows_minutes:
            mean, std = F.col(_tmp(m, "mean", w)), F.col(_tmp(m, "std", w))
            out += [
                mean.alias(f"{m}__mean_{w}m"),
                std.alias(f"{m}__std_{w}m"),
                F.when(std > 0, (x - mean) / std).otherwise(F.lit(0.0)).alias(f"{m}__z_{w}m"),
            ]
        roc = F.when(minutes > 0, (x - F.col(_tmp(m, "prev"))) / minutes).otherwise(F.lit(0.0))
        out.append(roc.alias(f"{m}__roc"))
    return windowed.select(entity, ts, *out)


def _tmp(metric: str, stat: str, window: int | None = None) -> str:
    return f"__{metric}__{stat}" + ("" if window is None else f"_{window}")
