"""How much the driver's memory grows while a night's raw partition is validated, by fleet size.

For each size: generate one day of a synthetic fleet (1,440 rows an entity, ``fleetwatch.core.synthetic``)
in a child process, then, each in a fresh spawned process with its own Spark session (so one
measurement's allocations cannot hide in another's retained heap), the driver's resident memory
above its level just before (sampled every 10 ms):

- ``page check``: the check that decodes every page of the partition's files, as validation runs it
  (one column chunk of one row group at a time);
- ``page check, batches``: the same files read with ``ParquetFile.iter_batches`` (how the check
  read them before; it reads ahead);
- ``suite``: the Great Expectations suite on the Spark frame;
- ``validate_partition``: the whole step.

    .venv/bin/python -m benchmarks.validate_memory --entities 1000 5000
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import multiprocessing
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

DAY = dt.date(2026, 1, 1)
PARTS = ("page check", "page check, batches", "suite", "validate_partition")


def _settings(home: Path):
    from fleetwatch.core.settings import Settings

    return Settings(home=home, training_window_days=1, min_history_days=1)


def _generate(home: Path, entities: int) -> int:
    from fleetwatch.core.synthetic import generate_fleet

    return generate_fleet(_settings(home), "fleet", entities=entities, days=1, start=DAY, seed=7)["rows"]


def _measure(home: Path, part: str) -> dict:
    """The driver's RSS growth (bytes) and wall seconds of one part, in this (fresh) process."""
    import psutil
    import pyarrow.parquet as pq

    from fleetwatch.core import quality
    from fleetwatch.core.lake import Lake, local_path
    from fleetwatch.core.raw_location import raw_partition
    from fleetwatch.core.spark import get_spark
    from fleetwatch.core.specs import load_spec

    settings = _settings(home)
    spark = get_spark(settings, "fleetwatch-validate-memory")
    spark.range(10).count()
    import great_expectations  # noqa: F401 - imported before the baseline: its own size is not the data's

    lake, spec = Lake(settings.lake_root), load_spec(settings.specs_dir, "fleet")
    raw = raw_partition(lake, spec, DAY)
    process, peak, halt = psutil.Process(), [0], threading.Event()

    def sample() -> None:
        while not halt.wait(0.01):
            peak[0] = max(peak[0], process.memory_info().rss)

    time.sleep(0.2)
    base = peak[0] = process.memory_info().rss
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    if part == "page check":
        assert quality._unreadable_file(lake, raw, spark) is None
    elif part == "page check, batches":
        for path in lake.data_files(raw, spark):
            for _ in pq.ParquetFile(local_path(path)).iter_batches():
                pass
    elif part == "suite":
        quality._validate_frame(spec, "fleet", DAY, spark.read.parquet(raw))
    else:
        quality.validate_partition(spark, settings, "fleet", DAY)
    wall = time.perf_counter() - started
    time.sleep(0.1)
    halt.set()
    sampler.join()
    spark.stop()
    return {"growth_bytes": peak[0] - base, "wall_s": wall}


def _in_child(fn, *args):
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, nargs="+", default=[1000, 5000])
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="fleetwatch-validate-memory-"))
    print(f"load before: {os.getloadavg()[0]:.1f}")
    print("| entities | rows | " + " | ".join(f"{p}: growth (MiB) / wall (s)" for p in PARTS) + " |")
    print("|---:|---:|" + "---:|" * len(PARTS))
    try:
        for n in args.entities:
            home = root / f"n{n}"
            rows = _in_child(_generate, home, n)
            cells = [_in_child(_measure, home, part) for part in PARTS]
            shown = " | ".join(f"{c['growth_bytes'] / 2**20:.0f} / {c['wall_s']:.1f}" for c in cells)
            print(f"| {n:,} | {rows:,} | {shown} |", flush=True)
            shutil.rmtree(home, ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"load after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
