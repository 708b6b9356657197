"""Where a first validation's CPU goes in a new Spark session: each expectation cold and warm.

On a home ``benchmarks.scale --keep`` left, in a new session whose JVM a features step has warmed
first (as a night's earlier steps warm it): imports Great Expectations, then runs the night's suite
(the one ``fleetwatch.core.quality`` runs on a passing partition, ``BOOLEAN_ONLY``) expectation by
expectation twice (``--each``), then whole three times. Prints the wall time and the CPU-seconds of
the driver and of its child processes (the JVM, Spark's Python workers) for each.

``--uniqueness`` swaps Great Expectations' (entity, ts) uniqueness check (a window count over a
struct of both columns) for a ``GROUP BY ... HAVING count(*) > 1`` query, or leaves it out, to
price that one check. The driver's JVM options come from ``FLEETWATCH_SPARK_DRIVER_JAVA_OPTIONS``
(for example ``-XX:+UseSerialGC``), so runs with different collectors can be compared.

    .venv/bin/python -m benchmarks.validation_warmup --home H/n100 --dataset scale100 --day 2026-01-02 --each
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import time
from pathlib import Path

import psutil

from feature_store.pipeline import build_features
from fleetwatch.core import quality
from fleetwatch.core.lake import Lake
from fleetwatch.core.raw_location import raw_partition
from fleetwatch.core.settings import Settings
from fleetwatch.core.spark import get_spark
from fleetwatch.core.specs import load_spec

UNIQUE = "expect_compound_columns_to_be_unique"


class Clock:
    """Wall time and CPU-seconds of this process and of its children, per call of :meth:`time`."""

    def __init__(self) -> None:
        self.me = psutil.Process()
        self.rows: list[dict] = []

    def _cpu(self) -> tuple[float, float]:
        children = sum(sum(c.cpu_times()[:2]) for c in self.me.children(recursive=True))
        return sum(self.me.cpu_times()[:2]), children

    def time(self, label: str, fn):
        driver, jvm = self._cpu()
        started = time.perf_counter()
        out = fn()
        wall = time.perf_counter() - started
        driver_after, jvm_after = self._cpu()
        row = {"step": label, "wall_s": wall, "driver_cpu_s": driver_after - driver, "jvm_cpu_s": jvm_after - jvm}
        self.rows.append(row)
        print(f"{label[:70]:70s} wall {wall:6.2f}  driver {row['driver_cpu_s']:6.2f}  JVM and workers "
              f"{row['jvm_cpu_s']:6.2f}", flush=True)
        return out


def suite(spec, day: dt.date, df, uniqueness: str) -> list:
    """The suite a passing partition runs, with the uniqueness check as ``uniqueness`` says."""
    import great_expectations.expectations as gxe  # lazy: its import is timed by the caller

    schema = {f.name: type(f.dataType).__name__ for f in df.schema.fields}
    runnable, _ = quality._runnable(quality.build_suite(spec, day), schema)
    screen = quality._screening(runnable)
    if uniqueness == "none":
        return [e for e in screen if e.expectation_type != UNIQUE]
    if uniqueness == "groupby":
        entity, ts = spec.entity_column, spec.timestamp_column
        query = f"SELECT `{entity}`, `{ts}`, count(*) AS copies FROM {{batch}} GROUP BY `{entity}`, `{ts}` HAVING count(*) > 1"
        return [gxe.UnexpectedRowsExpectation(unexpected_rows_query=query) if e.expectation_type == UNIQUE else e
                for e in screen]
    return screen


def run(home: Path, dataset: str, day: dt.date, *, each: bool, uniqueness: str, spark=None) -> list[dict]:
    """The timed steps, as rows of step, wall time and CPU-seconds (driver; JVM and workers), in a
    new session unless ``spark`` is given (that session is left open)."""
    settings = Settings(home=home)
    own = spark is None
    spark = spark or get_spark(settings, "fleetwatch-validation-warmup")
    clock = Clock()
    clock.time("features (warms the JVM)", lambda: build_features(spark, settings, dataset, day))
    clock.time("import great_expectations", lambda: __import__("great_expectations"))
    spec = load_spec(settings.specs_dir, dataset)
    df = spark.read.parquet(raw_partition(Lake(settings.lake_root), spec, day))
    expectations = suite(spec, day, df, uniqueness)
    for round_ in (1, 2) if each else ():
        for e in expectations:
            columns = ",".join(quality._columns_of(e)[:2])
            clock.time(f"{round_} {e.expectation_type} {columns}",
                       lambda e=e: quality._run_suite(dataset, day, [copy.copy(e)], df, "BOOLEAN_ONLY"))
    for round_ in (1, 2, 3):
        result = clock.time(f"whole suite {round_} ({uniqueness})", lambda: quality._run_suite(
            dataset, day, [copy.copy(e) for e in expectations], df, "BOOLEAN_ONLY"))
        if not result.success:
            raise SystemExit(f"the suite failed on {dataset} dt={day}: pick a partition that passes")
    if own:
        spark.stop()
    return clock.rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True, help="a home benchmarks.scale --keep left")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--day", type=dt.date.fromisoformat, required=True, help="the night's day")
    parser.add_argument("--each", action="store_true", help="also time every expectation alone, twice")
    parser.add_argument("--uniqueness", choices=("window", "groupby", "none"), default="window")
    args = parser.parse_args(argv)
    run(args.home, args.dataset, args.day, each=args.each, uniqueness=args.uniqueness)


if __name__ == "__main__":
    main()
