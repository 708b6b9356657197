"""Wall time and peak memory of each stage of one night, for fleets of several sizes.

In one process with one Spark session (``fleetwatch.core.spark.get_spark``), for each fleet size in a
fresh temporary FleetWatch home: generate two days of synthetic data (a history day and the
night), validate the night's raw partition, build features for both days, train on the history
day (``min_history_days=1``, ``training_window_days=1``), then score the night and publish its
alerts, each through the same library function the nightly and retrain DAGs run.

Memory: Spark's JVM and its Python workers are processes of their own, so a thread samples the
resident set size of the driver, the JVM and the workers (every ``--interval`` seconds, summed per
group: forked workers share pages, so their sum overstates them) and the 1-minute load average;
the driver's lifetime peak from ``getrusage`` is printed as well.

    .venv/bin/python -m benchmarks.night_stages                    # 20 and 200 entities
    .venv/bin/python -m benchmarks.night_stages --entities 20 200 2000
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from feature_store.pipeline import build_features
from fleetwatch.core.publishing import publish_alerts
from fleetwatch.core.quality import validate_partition
from fleetwatch.core.settings import Settings
from fleetwatch.core.spark import get_spark
from fleetwatch.core.specs import load_spec
from fleetwatch.core.synthetic import generate_fleet
from models.scoring import score_partition
from models.training import model_params, train_models

START = dt.date(2026, 1, 1)
STAGES = ("generate", "validate", "features (history)", "features (night)", "train", "score", "publish")
NIGHT = ("validate", "features (night)", "score", "publish")
QUICK_TRAIN = {"ae_epochs": 3, "max_train_rows": 1000}


def _params(settings, dataset: str, quick: bool):
    """The platform's model parameters for the dataset, cut down by QUICK_TRAIN when ``quick``."""
    params = model_params(settings, load_spec(settings.specs_dir, dataset))
    return params.model_copy(update=QUICK_TRAIN) if quick else params


class TreeSampler(threading.Thread):
    """Peak RSS of this process, of the JVM and of the other descendants (Spark's Python workers)."""

    def __init__(self, interval: float):
        super().__init__(daemon=True)
        self.interval = interval
        self.root = psutil.Process()
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> dict:
        """Start a new window; returns the peaks of the window that ends."""
        with self._lock:
            previous = getattr(self, "peaks", {})
            self.peaks = {"driver": 0, "jvm": 0, "workers": 0, "total": 0, "load": 0.0}
        return previous

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            sample = self.sample()
            with self._lock:
                for key, value in sample.items():
                    self.peaks[key] = max(self.peaks[key], value)

    def sample(self) -> dict:
        groups = {"driver": _rss(self.root), "jvm": 0, "workers": 0}
        for child in self.root.children(recursive=True):
            try:
                group = "jvm" if child.name() == "java" else "workers"
            except psutil.Error:
                continue
            groups[group] += _rss(child)
        return {**groups, "total": sum(groups.values()), "load": os.getloadavg()[0]}

    def stop(self) -> None:
        self._halt.set()
        self.join()


def _rss(process: psutil.Process) -> int:
    try:
        return process.memory_info().rss
    except psutil.Error:  # ended between listing and reading
        return 0


def run_size(spark, entities: int, home: Path, base_settings: dict, sampler: TreeSampler, quick_train: bool = False) -> dict:
    """One night for a fleet of ``entities``; returns seconds per stage, rows, alerts and peaks.

    ``quick_train`` trains with :data:`QUICK_TRAIN` (fewer epochs and rows): scoring costs the
    same (same networks and forests), the retrain is cheaper, so a large fleet's night can be
    timed without its full retrain.
    """
    settings = Settings(home=home, min_history_days=1, training_window_days=1, **base_settings)
    dataset = f"bench{entities}"
    history, night = START, START + dt.timedelta(days=1)
    steps = {
        "generate": lambda: generate_fleet(settings, dataset, entities=entities, days=2, start=START, seed=settings.seed),
        "validate": lambda: validate_partition(spark, settings, dataset, night),
        "features (history)": lambda: build_features(spark, settings, dataset, history),
        "features (night)": lambda: build_features(spark, settings, dataset, night),
        "train": lambda: train_models(spark, settings, dataset, history, params=_params(settings, dataset, quick_train)),
        "score": lambda: score_partition(spark, settings, dataset, night),
        "publish": lambda: publish_alerts(settings, dataset, night),
    }
    seconds, outputs = {}, {}
    sampler.reset()
    for stage in STAGES:
        started = time.perf_counter()
        outputs[stage] = steps[stage]()
        seconds[stage] = time.perf_counter() - started
        _log(f"{entities} entities, {stage}: {seconds[stage]:.1f} s; {_short(outputs[stage])}")
    peaks = sampler.reset()
    return {
        "entities": entities,
        "quick_train": quick_train,
        "rows": entities * 1440,
        "seconds": seconds,
        "alerts": outputs["publish"],
        "peaks": peaks,
        "driver_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def table(results: list[dict]) -> str:
    head = ["entities", "rows/day", *[f"{s} (s)" for s in STAGES], "night (s)", "alerts",
            "driver peak", "JVM peak", "workers peak", "sum peak", "max load (1 min)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for r in results:
        s, p = r["seconds"], r["peaks"]
        cells = [
            str(r["entities"]), f"{r['rows']:,}",
            *[f"{s[stage]:.1f}" + ("*" if stage == "train" and r["quick_train"] else "") for stage in STAGES],
            f"{sum(s[stage] for stage in NIGHT):.1f}", str(r["alerts"]),
            *[_gib(p[k]) for k in ("driver", "jvm", "workers", "total")], f"{p['load']:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, nargs="+", default=[20, 200])
    parser.add_argument("--spark-master", default=None, help="default: the settings' (local[*])")
    parser.add_argument("--driver-memory", default=None, help="spark.driver.memory; default: the settings' (2g)")
    parser.add_argument("--interval", type=float, default=0.5, help="memory sampling interval (s)")
    parser.add_argument("--quick-train-from", type=int, default=1000,
                        help="fleets of at least this many entities train with QUICK_TRAIN (marked * in the table)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary homes (paths are printed)")
    args = parser.parse_args(argv)

    base = {}
    if args.spark_master:
        base["spark_master"] = args.spark_master
    if args.driver_memory:
        base["spark_driver_memory"] = args.driver_memory
    root = Path(tempfile.mkdtemp(prefix="fleetwatch-bench-"))
    sampler = TreeSampler(args.interval)
    sampler.start()
    load_start = os.getloadavg()
    started = time.perf_counter()
    spark = get_spark(Settings(home=root / "session", **base), "fleetwatch-benchmark")
    spark_start = time.perf_counter() - started
    conf = spark.sparkContext.getConf()
    results = []
    try:
        for entities in args.entities:
            home = root / f"n{entities}"
            results.append(run_size(spark, entities, home, base, sampler, entities >= args.quick_train_from))
            if not args.keep:
                shutil.rmtree(home, ignore_errors=True)
            print(table(results[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    finally:
        sampler.stop()
        spark.stop()
        if args.keep:
            _log(f"homes kept under {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    print(
        f"Spark {spark.version} master {conf.get('spark.master')}, driver memory {conf.get('spark.driver.memory')}, "
        f"shuffle partitions {conf.get('spark.sql.shuffle.partitions')}; {os.cpu_count()} CPUs, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB; session start {spark_start:.1f} s; "
        f"load average at start {_load(load_start)}, at end {_load(os.getloadavg())}"
    )
    print()
    print(table(results))
    print()
    print(
        f"night = validate + features (night) + score + publish. * = trained with {QUICK_TRAIN} (the night's "
        "stages cost the same; the retrain does not). Peaks are resident set sizes sampled every "
        f"{args.interval} s per size; driver lifetime peak (getrusage): "
        f"{_gib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)}."
    )


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def _load(values) -> str:
    return " ".join(f"{x:.2f}" for x in values)


def _short(output) -> str:
    text = str(output)
    return text if len(text) < 160 else text[:157] + "..."


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
