"""What a night's features cost in each engine: pandas inside Spark tasks against Spark SQL range frames.

FleetWatch computes each entity's rolling windows in pandas inside Spark tasks
(``feature_store.transforms.compute_features``). :func:`sql_range_frames` gives the same columns
with Spark SQL window functions over epoch-second range frames, the way the feature step worked
before; the tests use it as an independent oracle for the pandas version. This script times both
on the same cached rows in one Spark session (written to Spark's ``noop`` sink, so only the
computation is timed), then the Parquet write of the computed features with and without
dictionary encoding (the feature partitions are written without; interleaved, the second of two
rounds kept), and the pandas function alone
on the same rows in this process:

    .venv/bin/python -m benchmarks.feature_engines --entities 100 200 --metrics 8

Rows: ``--entities`` entities, one day and the 60-minute lookback (1,500 one-minute rows each), of
``--metrics`` random-walk metrics. CPU-seconds are summed over the process tree (driver, Spark's
JVM, its Python workers), as in ``benchmarks.scale``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from benchmarks.night_stages import _log
from benchmarks.scale import TreeMeter
from feature_store.transforms import compute_features, entity_features
from feature_store.views import FeatureView
from fleetwatch.core.settings import Settings
from fleetwatch.core.spark import get_spark


def sql_range_frames(df: DataFrame, view: FeatureView) -> DataFrame:
    """The view's features with Spark SQL range frames over epoch seconds (ties share a frame)."""
    entity, ts = view.entity_column, view.timestamp_column
    seconds = F.unix_seconds(F.col(ts))
    by_entity = Window.partitionBy(entity).orderBy(seconds)
    elapsed = (seconds - F.lag(seconds).over(by_entity)) / 60.0
    cols: list[Column] = []
    for m in view.metrics:
        x = F.col(m).cast("double")
        cols.append(x.alias(m))
        for w in view.windows_minutes:
            frame = by_entity.rangeBetween(-(w * 60 - 1), 0)
            mean, std = F.avg(x).over(frame), F.coalesce(F.stddev_samp(x).over(frame), F.lit(0.0))
            z = F.when(std > 0, (x - mean) / std).otherwise(F.lit(0.0))
            cols += [mean.alias(f"{m}__mean_{w}m"), std.alias(f"{m}__std_{w}m"), z.alias(f"{m}__z_{w}m")]
        roc = F.when(elapsed > 0, (x - F.lag(x).over(by_entity)) / elapsed).otherwise(F.lit(0.0))
        cols.append(roc.alias(f"{m}__roc"))
    return df.select(entity, ts, *cols)


def raw_rows(entities: int, metrics: int, seed: int = 7) -> pd.DataFrame:
    """``entities`` x 1,500 one-minute rows of ``metrics`` random walks."""
    rng = np.random.default_rng(seed)
    ts = pd.date_range("2026-01-01 23:00", periods=1500, freq="1min")
    names = np.repeat([f"e{i:05d}" for i in range(entities)], len(ts))
    frame = pd.DataFrame({"entity_id": names, "ts": np.tile(ts, entities)})
    for j in range(metrics):
        frame[f"m{j}"] = 50 + rng.normal(0, 1, len(frame)).cumsum() / 10
    return frame


def measure(entities: int, metrics: int) -> dict:
    """Wall and CPU seconds of each engine on the same rows; checks that they agree."""
    view = FeatureView("bench", 1, "entity_id", "ts", tuple(f"m{j}" for j in range(metrics)))
    frame = raw_rows(entities, metrics)
    spark = get_spark(Settings(home=tempfile.mkdtemp()), app_name="feature-engines")
    df = spark.createDataFrame(frame.astype({"ts": "datetime64[us]"}))
    df = df.repartition(2 * spark.sparkContext.defaultParallelism, "entity_id").cache()
    df.count()
    meter = TreeMeter(0.5)
    meter.start()
    out = {"entities": entities, "metrics": metrics, "rows": len(frame), "load_1min": os.getloadavg()[0]}
    for name, build in (("pandas in Spark", compute_features), ("Spark SQL range frames", sql_range_frames)):
        wall, cpu = time.perf_counter(), meter.cpu_seconds()
        build(df, view).write.format("noop").mode("overwrite").save()
        out[name] = {"wall_s": time.perf_counter() - wall, "cpu_s": meter.cpu_seconds() - cpu}
        _log(f"{entities} entities, {name}: {out[name]}")
    features = compute_features(df, view).cache()
    features.count()
    writes = (("Parquet write, dictionary", "true"), ("Parquet write, plain", "false"))
    for name, dictionary in writes * 2:  # interleaved twice, the second round kept: the first warms the writer
        path = tempfile.mkdtemp() + "/features"
        wall, cpu = time.perf_counter(), meter.cpu_seconds()
        features.write.option("parquet.enable.dictionary", dictionary).mode("overwrite").parquet(path)
        out[name] = {"wall_s": time.perf_counter() - wall, "cpu_s": meter.cpu_seconds() - cpu}
        out[name]["bytes"] = sum(f.stat().st_size for f in Path(path).iterdir())
        _log(f"{entities} entities, {name}: {out[name]}")
    features.unpersist()
    wall, cpu = time.perf_counter(), time.process_time()
    for _, rows in frame.groupby("entity_id", sort=False):
        entity_features(rows, view)
    out["pandas, one process"] = {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}
    sample = frame[frame.entity_id.isin(["e00000", "e00001"])]
    got = compute_features(spark.createDataFrame(sample.astype({"ts": "datetime64[us]"})), view).toPandas()
    want = sql_range_frames(spark.createDataFrame(sample.astype({"ts": "datetime64[us]"})), view).toPandas()
    got, want = (f.sort_values(["entity_id", "ts"]).iloc[:, 2:].to_numpy() for f in (got, want))
    out["max_abs_difference"] = float(abs(got - want).max())
    out["load_1min_after"] = os.getloadavg()[0]
    meter.stop()
    df.unpersist()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entities", type=int, nargs="+", default=[100])
    parser.add_argument("--metrics", type=int, default=8)
    args = parser.parse_args()
    print(
        "| entities | rows | pandas in Spark: wall s, CPU-s | Spark SQL range frames: wall s, CPU-s | CPU ratio "
        "| pandas, one process: CPU-s | max abs difference | Parquet write, dictionary / plain: CPU-s, MB | load (1 min) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for n in args.entities:
        r = measure(n, args.metrics)
        new, old, one = r["pandas in Spark"], r["Spark SQL range frames"], r["pandas, one process"]
        dic, plain = r["Parquet write, dictionary"], r["Parquet write, plain"]
        print(
            f"| {n:,} | {r['rows']:,} | {new['wall_s']:.1f}, {new['cpu_s']:.1f} | {old['wall_s']:.1f}, {old['cpu_s']:.1f} | "
            f"{old['cpu_s'] / new['cpu_s']:.1f}x | {one['cpu_s']:.1f} | {r['max_abs_difference']:.1e} | "
            f"{dic['cpu_s']:.1f}, {dic['bytes'] / 1e6:.0f} / {plain['cpu_s']:.1f}, {plain['bytes'] / 1e6:.0f} | "
            f"{r['load_1min']:.1f}-{r['load_1min_after']:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
