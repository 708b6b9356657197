"""What the data-quality suite costs a night: GE's full results against pass/fail first.

For each size, one day of a synthetic fleet (1,440 rows an entity, ``fleetwatch.core.synthetic``)
is read and cached in one Spark session, then the spec's suite runs on it, ``--rounds`` times each,
interleaved:

- ``full``: every expectation with GE's ``SUMMARY`` results (counts and sample values), how
  validation ran before;
- ``pass/fail first``: validation's own ``_evaluate``: ``BOOLEAN_ONLY``, and the full run only if
  something failed;
- ``pass/fail first, failing``: the same on the partition with one NaN metric value, so both runs.

Prints the median wall seconds, CPU seconds of the process tree (driver, Spark's JVM) and Spark
jobs of each, with the load average.

    .venv/bin/python -m benchmarks.validation_cost --entities 1000
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import psutil
from pyspark.sql import functions as F

from fleetwatch.core import quality
from fleetwatch.core.lake import Lake
from fleetwatch.core.raw_location import raw_partition
from fleetwatch.core.settings import Settings
from fleetwatch.core.spark import get_spark
from fleetwatch.core.specs import load_spec
from fleetwatch.core.synthetic import generate_fleet

DAY = dt.date(2026, 1, 1)


def _cpu() -> float:
    root = psutil.Process()
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            continue
    return total


def _full(spec, df):
    schema = {f.name: type(f.dataType).__name__ for f in df.schema.fields}
    to_run, _ = quality._runnable(quality.build_suite(spec, DAY), schema)
    return quality._run_suite(spec.name, DAY, to_run, df, "SUMMARY").success


def _first(spec, df):
    return quality._evaluate(quality.build_suite(spec, DAY), spec.name, DAY, df)[0].success


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, nargs="+", default=[1000])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="fleetwatch-validation-cost-"))
    print(f"load before: {os.getloadavg()[0]:.1f}")
    print("| entities | rows | variant | wall (s) | CPU-s | Spark jobs | passed |")
    print("|---:|---:|---|---:|---:|---:|---|")
    try:
        spark = get_spark(Settings(home=root / "session"), "fleetwatch-validation-cost")
        sc = spark.sparkContext
        for n in args.entities:
            settings = Settings(home=root / f"n{n}", training_window_days=1, min_history_days=1)
            rows = generate_fleet(settings, "fleet", entities=n, days=1, start=DAY, seed=7)["rows"]
            spec = load_spec(settings.specs_dir, "fleet")
            df = spark.read.parquet(raw_partition(Lake(settings.lake_root), spec, DAY)).cache()
            df.count()
            metric, first_ts = spec.metric_names[0], df.agg(F.min(spec.timestamp_column)).first()[0]
            bad = df.withColumn(metric, F.when(F.col(spec.timestamp_column) == first_ts, F.lit(float("nan")))
                                .otherwise(F.col(metric))).cache()
            bad.count()
            variants = {"full": (_full, df), "pass/fail first": (_first, df), "pass/fail first, failing": (_first, bad)}
            _full(spec, df)  # warm: GE's imports and first plans
            figures = {name: [] for name in variants}
            for round_ in range(args.rounds):
                for name, (run, frame) in variants.items():
                    group = f"{name}-{n}-{round_}"
                    sc.setJobGroup(group, name)
                    started, cpu = time.perf_counter(), _cpu()
                    passed = run(spec, frame)
                    figures[name].append((time.perf_counter() - started, _cpu() - cpu,
                                          len(sc.statusTracker().getJobIdsForGroup(group)), passed))
            for name, values in figures.items():
                wall, cpu, jobs = (statistics.median(v[i] for v in values) for i in range(3))
                print(f"| {n:,} | {rows:,} | {name} | {wall:.1f} | {cpu:.1f} | {jobs:.0f} | {values[0][3]} |", flush=True)
            df.unpersist()
            bad.unpersist()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"load after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
