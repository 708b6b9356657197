"""A kept home's night rerun in one Spark session: CPU-seconds and wall time of each stage, per night.

For comparing two versions of the code on the same rows: ``benchmarks.scale --keep`` leaves a
trained home behind; this script, run from each version's own folder (Spark's Python workers
import from the working directory ahead of ``PYTHONPATH``), reruns that home's night (validate,
features, score) ``--nights`` times in one session, the first night cold, and prints the
CPU-seconds of the whole process tree (driver, JVM, Python workers) and the wall time of each
stage. Run the versions alternately, so that the machine's drift falls on both.

    cd <version's folder> && PYTHONPATH=. python -m benchmarks.night_rerun --home H --dataset scale1000 --day 2026-01-02
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import time
from pathlib import Path

from benchmarks.scale import TreeMeter
from feature_store.pipeline import build_features
from fleetwatch.core.quality import validate_partition
from fleetwatch.core.settings import Settings
from fleetwatch.core.spark import get_spark
from models.scoring import score_partition

STAGES = ("validate", "features", "score")


def rerun(home: Path, dataset: str, day: dt.date, nights: int, train_days: int = 1, interval: float = 0.5) -> list[dict]:
    """Each night's stages as ``{stage: (cpu_seconds, wall_seconds)}``, in one session."""
    settings = Settings(home=home, training_window_days=train_days, min_history_days=min(3, train_days))
    meter = TreeMeter(interval)
    meter.start()
    steps = {
        "validate": lambda spark: validate_partition(spark, settings, dataset, day),
        "features": lambda spark: build_features(spark, settings, dataset, day),
        "score": lambda spark: score_partition(spark, settings, dataset, day),
    }
    out = []
    try:
        spark = get_spark(settings, "fleetwatch-night-rerun")
        for _ in range(nights):
            night = {}
            for stage in STAGES:
                cpu, started = meter.cpu_seconds(), time.perf_counter()
                steps[stage](spark)
                night[stage] = (meter.cpu_seconds() - cpu, time.perf_counter() - started)
            out.append(night)
            print(json.dumps(night), flush=True)
    finally:
        meter.stop()
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True, help="a home benchmarks.scale --keep left")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--day", type=dt.date.fromisoformat, required=True, help="the night's day")
    parser.add_argument("--nights", type=int, default=2)
    parser.add_argument("--train-days", type=int, default=1)
    args = parser.parse_args(argv)
    load = os.getloadavg()
    nights = rerun(args.home, args.dataset, args.day, args.nights, args.train_days)
    for i, night in enumerate(nights):
        total_cpu = sum(c for c, _ in night.values())
        total_wall = sum(w for _, w in night.values())
        stages = ", ".join(f"{s} {c:.1f} ({w:.1f} s)" for s, (c, w) in night.items())
        print(f"night {i + 1} ({'cold' if i == 0 else 'warm'}): {total_cpu:.1f} CPU-s ({total_wall:.1f} s); {stages}")
    print(f"load {load[0]:.2f} at the start, {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
