"""What a retrain and a night cost per entity as the fleet grows, against the plain loop and the floor.

For each fleet size, in a fresh temporary FleetWatch home and one Spark session with the default
driver memory and ``maxResultSize``: generate a synthetic fleet (``fleetwatch.core.synthetic``;
1,440 rows an entity a day, ``--train-days`` days then the night's day; the six generated metrics
are widened to ``--metrics`` with noisy copies of them), then through the library functions the
DAGs run:

- retrain: features of the training days, ``train_models`` (fit, model store, shadow score,
  MLflow version, gate);
- night: validate, features, score, publish;
- the same night again in the same session: as a night runs on a long-lived Spark Connect server
  (``fleetwatch.app.connect_server``), whose JVM the nights before have warmed.

Per stage: wall time, CPU-seconds of the whole process tree (driver, Spark's JVM and its Python
workers: each process's cumulative CPU time is sampled and its last value kept, so workers that
ended still count), peak resident memory (the driver's, and the peak of the sum over processes)
and the highest 1-minute load average seen.

Then, on the same lake, in a child process: the plain per-entity loop (``benchmarks.plain_loop``;
``--no-plain`` leaves it out), and the night's floor: reading the night's feature Parquet plus pure
model scoring of its rows (models loaded before the clock starts), divided by the cores. The fleet
is generated in a child process too, so that the driver's memory is the product's alone: what the
generator, the loop and the floor held would otherwise stay in the driver's heap and count in the
next stage's or the next size's peak. Prints a table and writes the figures as JSON (``--out``).

    .venv/bin/python -m benchmarks.scale                                  # 100 and 1,000 entities
    .venv/bin/python -m benchmarks.scale --entities 100 --metrics 38 --out scale.json
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import json
import multiprocessing
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

from benchmarks import plain_loop
from benchmarks.night_stages import TreeSampler, _gib, _log
from feature_store.pipeline import build_features
from feature_store.views import view_for
from fleetwatch.core.alerts_store import AlertsStore
from fleetwatch.core.lake import Lake, local_path, write_pandas_partition
from fleetwatch.core.publishing import publish_alerts
from fleetwatch.core.quality import validate_partition
from fleetwatch.core.settings import Settings
from fleetwatch.core.spark import get_spark
from fleetwatch.core.specs import DatasetSpec, MetricSpec, load_spec, write_spec
from fleetwatch.core.synthetic import generate_fleet
from models import registry
from models.bundle import ModelBundle
from models.frames import one_thread_per_task
from models.scoring import score_partition
from models.training import model_params, train_models

START = dt.date(2026, 1, 1)
RETRAIN = ("features (training days)", "train")
NIGHT = ("validate", "features (night)", "score", "publish")
AGAIN = tuple(f"{stage}, again" for stage in NIGHT)  # the same night rerun in the same, now warm, session
QUICK = {"ae_epochs": 2, "iforest_n_estimators": 10, "max_train_rows": 500, "fleet_train_rows": 2000}


class TreeMeter(TreeSampler):
    """:class:`TreeSampler`'s peaks, plus the cumulative CPU seconds of every process of the tree."""

    def __init__(self, interval: float):
        self.cpu: dict[tuple[int, float], float] = {}  # (pid, start time) -> last user+system seconds
        super().__init__(interval)

    def sample(self) -> dict:
        for process in [self.root, *self.root.children(recursive=True)]:
            try:
                with process.oneshot():
                    times = process.cpu_times()
                    self.cpu[(process.pid, process.create_time())] = times.user + times.system
            except psutil.Error:
                continue
        return super().sample()

    def cpu_seconds(self) -> float:
        """CPU seconds of every process seen so far, read now; the memory read at the same time
        counts towards the window's peaks (a stage shorter than the interval still has one)."""
        with self._lock:
            for key, value in self.sample().items():
                self.peaks[key] = max(self.peaks[key], value)
            return sum(self.cpu.values())


def widen(settings: Settings, dataset: str, n_metrics: int, days: list[dt.date], seed: int) -> DatasetSpec:
    """Add metrics to a generated fleet (each a scaled, noisy copy of one generated metric) up to
    ``n_metrics`` in its spec and raw partitions; returns the spec."""
    spec = load_spec(settings.specs_dir, dataset)
    base = spec.metric_names
    extra = [f"x{i:02d}_{base[i % len(base)]}" for i in range(max(0, n_metrics - len(base)))]
    if not extra:
        return spec
    factors = np.random.default_rng(seed).uniform(0.5, 2.0, len(extra))
    lake = Lake(settings.lake_root)
    for d in days:
        path = lake.raw(dataset, d)
        frame = pd.read_parquet(path)
        rng = np.random.default_rng([seed, d.toordinal()])
        for i, name in enumerate(extra):
            source = frame[base[i % len(base)]].to_numpy()
            frame[name] = np.abs(factors[i] * source * (1 + rng.normal(0, 0.05, len(frame))))
        write_pandas_partition(lake, frame, path)
    widened = DatasetSpec(**{**spec.model_dump(), "metrics": [*spec.metrics, *(MetricSpec(name=n, min=0) for n in extra)]})
    write_spec(settings.specs_dir, widened)
    return widened


def night_floor(settings: Settings, dataset: str, night: dt.date, chunk_entities: int = 125) -> dict:
    """Reading the night's feature Parquet, and scoring its rows with the champion's models already
    loaded, in this process: wall and CPU seconds of each (model loading timed apart). One part file
    at a time (the feature job writes each entity's rows into one file), and in a file at most
    ``chunk_entities`` entities at a time, with their models: the whole night of a 5,000-entity
    fleet in one pandas frame ran this process out of memory, and holding a whole file's models
    made the floor depend on how many files the features step wrote (333 entities a file: loading
    33.6 and scoring 56.2 CPU-s at 1,000 entities; 125: 15.2 and 47.0; ``benchmarks/README.md``).
    One thread, as each scoring task has (``one_thread_per_task``): the floor is divided by the
    cores, and torch's own threads would count the cores twice (and spin, inflating CPU-seconds)."""
    one_thread_per_task()
    spec = load_spec(settings.specs_dir, dataset)
    view = view_for(spec)
    clock = plain_loop._Clock()
    files = sorted(local_path(Lake(settings.lake_root).features(dataset, view.ref, night)).glob("*.parquet"))
    bundle_dir = registry.champion(settings, dataset).bundle_dir
    rows = 0
    for file in files:
        with clock.part("read"):
            frame = pd.read_parquet(file)
        frame = frame.rename(columns={spec.entity_column: "entity_id", spec.timestamp_column: "ts"})
        groups = frame.groupby("entity_id", sort=False).indices
        names = list(groups)
        for at in range(0, len(names), chunk_entities):
            chunk = names[at : at + chunk_entities]
            rows_of = frame.iloc[np.concatenate([groups[e] for e in chunk])]
            with clock.part("load_models"):
                bundle = ModelBundle.load(bundle_dir, keep_models=len(chunk) + 1)
                for entity in set(chunk) & set(bundle.entities):
                    bundle.entities[entity]
            with clock.part("score"):
                rows += len(bundle.score(rows_of))
            del bundle, rows_of
        del frame
    return {**{k: clock.wall.get(k, 0.0) for k in ("read", "load_models", "score")}, "cpu_seconds": clock.cpu,
            "rows": rows, "files": len(files)}


def _settings(home: Path, train_days: int, base: dict) -> Settings:
    return Settings(home=home, training_window_days=train_days, min_history_days=min(3, train_days), **base)


def _generate(home: Path, train_days: int, base: dict, dataset: str, entities: int, metrics: int) -> tuple[dict, DatasetSpec]:
    """The generated, widened fleet of one size (run in a child process)."""
    settings = _settings(home, train_days, base)
    days = [START + dt.timedelta(days=i) for i in range(train_days + 1)]
    generated = generate_fleet(settings, dataset, entities=entities, days=len(days), start=START, seed=settings.seed)
    return generated, widen(settings, dataset, metrics, days, settings.seed)


def _yardsticks(home: Path, train_days: int, base: dict, dataset: str, params, plain: bool) -> tuple[dict, dict | None]:
    """The night's floor and (``plain``) the plain loop on the same lake (run in a child process)."""
    settings = _settings(home, train_days, base)
    days = [START + dt.timedelta(days=i) for i in range(train_days + 1)]
    floor = night_floor(settings, dataset, days[-1])
    _log(f"{dataset}, floor: {floor}")
    if not plain:
        return floor, None
    spec = load_spec(settings.specs_dir, dataset)
    return floor, plain_loop.run(settings.lake_root, dataset, spec.metric_names, days[:-1], days[-1], params,
                                 seed=settings.seed)


def in_child(fn, *args):
    """``fn(*args)`` in a fresh (spawned) process; its memory never counts as the driver's."""
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def run_size(spark, entities: int, *, metrics: int, train_days: int, home: Path, meter: TreeMeter,
             base: dict, quick: bool = False, plain: bool = True) -> dict:
    """Retrain and night for one fleet size, then the plain loop and the floor on the same rows."""
    settings = _settings(home, train_days, base)
    dataset = f"scale{entities}"
    days = [START + dt.timedelta(days=i) for i in range(train_days + 1)]
    training, night = days[:-1], days[-1]
    started = time.perf_counter()
    generated, spec = in_child(_generate, home, train_days, base, dataset, entities, metrics)
    params = model_params(settings, spec)
    params = params.model_copy(update=QUICK) if quick else params
    _log(f"{entities} entities: generated {generated['rows']:,} rows, {len(spec.metrics)} metrics "
         f"in {time.perf_counter() - started:.1f} s")

    steps = {
        "features (training days)": lambda: [build_features(spark, settings, dataset, d) for d in training][-1],
        "train": lambda: train_models(spark, settings, dataset, training[-1], params=params),
        "validate": lambda: validate_partition(spark, settings, dataset, night),
        "features (night)": lambda: build_features(spark, settings, dataset, night),
        "score": lambda: score_partition(spark, settings, dataset, night),
        "publish": lambda: publish_alerts(settings, dataset, night),
    }
    steps.update({again: steps[stage] for stage, again in zip(NIGHT, AGAIN, strict=True)})
    stages, outputs = {}, {}
    for stage in (*RETRAIN, *NIGHT, *AGAIN):
        meter.reset()
        cpu, wall = meter.cpu_seconds(), time.perf_counter()
        outputs[stage] = steps[stage]()
        wall, cpu = time.perf_counter() - wall, meter.cpu_seconds() - cpu
        stages[stage] = {"wall_s": wall, "cpu_s": cpu, **_peaks(meter.reset())}
        _log(f"{entities} entities, {stage}: {wall:.1f} s wall, {cpu:.1f} CPU-s; {str(outputs[stage])[:150]}")

    scored_rows = spark.read.parquet(Lake(settings.lake_root).partition("scores", dataset, night)).count()
    alerts = AlertsStore(settings.alerts_db_url).frame(dataset, night)
    floor, plain = in_child(_yardsticks, home, train_days, base, dataset, params, plain)
    _log(f"{entities} entities, plain loop: {plain}")
    return {
        "entities": entities,
        "metrics": len(spec.metrics),
        "train_days": train_days,
        "quick_params": quick,
        "rows_generated": generated["rows"],
        "rows_night": entities * 1440,
        "rows_scored": scored_rows,
        "alerts_published": outputs["publish"],
        "alerts_in_table": len(alerts),
        "stages": stages,
        "floor": floor,
        "plain": plain,
        "cores": os.cpu_count(),
    }


def _peaks(peaks: dict) -> dict:
    return {"driver_peak_bytes": peaks["driver"], "jvm_peak_bytes": peaks["jvm"], "sum_peak_bytes": peaks["total"],
            "max_load_1min": peaks["load"]}


def summary(r: dict) -> dict:
    """Derived figures of one size: totals, per-entity figures and the ratios (of wall time, and of
    CPU-seconds, which a loaded machine disturbs less)."""
    s, n = r["stages"], r["entities"]
    fleetwatch_stages = (*RETRAIN, "features (night)", "score")
    total = {unit: {k: sum(s[stage][unit] for stage in stages) for k, stages in
                    (("retrain", RETRAIN), ("night", NIGHT), ("again", AGAIN), ("fleetwatch", fleetwatch_stages))}
             for unit in ("wall_s", "cpu_s")}
    nan = float("nan")
    plain_wall = sum(r["plain"]["seconds"].values()) if r["plain"] else nan
    plain_cpu = sum(r["plain"]["cpu_seconds"].values()) if r["plain"] else nan
    floor = (r["floor"]["read"] + r["floor"]["score"]) / r["cores"]
    floor_cpu = r["floor"]["cpu_seconds"]["read"] + r["floor"]["cpu_seconds"]["score"]
    return {
        "retrain_s": total["wall_s"]["retrain"],
        "night_s": total["wall_s"]["night"],
        "retrain_s_per_entity": total["wall_s"]["retrain"] / n,
        "night_s_per_entity": total["wall_s"]["night"] / n,
        "retrain_cpu_s_per_entity": total["cpu_s"]["retrain"] / n,
        "night_cpu_s_per_entity": total["cpu_s"]["night"] / n,
        "driver_peak_bytes": max(v["driver_peak_bytes"] for v in s.values()),
        "jvm_peak_bytes": max(v["jvm_peak_bytes"] for v in s.values()),
        "sum_peak_bytes": max(v["sum_peak_bytes"] for v in s.values()),
        "max_load_1min": max(v["max_load_1min"] for v in s.values()),
        "fleetwatch_retrain_plus_score_s": total["wall_s"]["fleetwatch"],
        "fleetwatch_retrain_plus_score_cpu_s": total["cpu_s"]["fleetwatch"],
        "plain_s": plain_wall,
        "plain_cpu_s": plain_cpu,
        "ratio_fleetwatch_to_plain": total["wall_s"]["fleetwatch"] / plain_wall,
        "cpu_ratio_fleetwatch_to_plain": total["cpu_s"]["fleetwatch"] / plain_cpu,
        "floor_s": floor,
        "floor_cpu_s": floor_cpu,
        "ratio_night_to_floor": total["wall_s"]["night"] / floor,
        "cpu_ratio_night_to_floor": total["cpu_s"]["night"] / floor_cpu,
        "night_again_s": total["wall_s"]["again"],
        "night_again_cpu_s": total["cpu_s"]["again"],
        "ratio_night_again_to_floor": total["wall_s"]["again"] / floor,
        "cpu_ratio_night_again_to_floor": total["cpu_s"]["again"] / floor_cpu,
    }


def table(results: list[dict]) -> str:
    lines = ["| entities | stage | wall (s) | CPU (s) | wall / entity (s) | CPU / entity (s) | driver peak | JVM peak "
             "| sum peak | load |", "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        n = r["entities"]
        for stage, v in r["stages"].items():
            lines.append(
                f"| {n} | {stage} | {v['wall_s']:.1f} | {v['cpu_s']:.1f} | {v['wall_s'] / n:.3f} | {v['cpu_s'] / n:.3f} | "
                f"{_gib(v['driver_peak_bytes'])} | {_gib(v['jvm_peak_bytes'])} | {_gib(v['sum_peak_bytes'])} | "
                f"{v['max_load_1min']:.1f} |"
            )
    lines += ["", "| entities | metrics | FleetWatch features+train+score: wall / CPU (s) | plain loop: wall / CPU (s) "
              "| FleetWatch / plain: wall / CPU | night: wall / CPU (s) | floor: wall per core / CPU (s) "
              "| night / floor: wall / CPU | night again / floor: wall / CPU | rows scored | alerts |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        m = r["summary"]
        lines.append(
            f"| {r['entities']} | {r['metrics']} | {m['fleetwatch_retrain_plus_score_s']:.1f} / "
            f"{m['fleetwatch_retrain_plus_score_cpu_s']:.1f} | {m['plain_s']:.1f} / {m['plain_cpu_s']:.1f} | "
            f"{m['ratio_fleetwatch_to_plain']:.2f}x / {m['cpu_ratio_fleetwatch_to_plain']:.2f}x | "
            f"{m['night_s']:.1f} / {sum(r['stages'][k]['cpu_s'] for k in NIGHT):.1f} | {m['floor_s']:.1f} / "
            f"{m['floor_cpu_s']:.1f} | {m['ratio_night_to_floor']:.2f}x / {m['cpu_ratio_night_to_floor']:.2f}x | "
            f"{m['ratio_night_again_to_floor']:.2f}x / {m['cpu_ratio_night_again_to_floor']:.2f}x | "
            f"{r['rows_scored']:,} | {r['alerts_published']} |"
        )
    lines += ["", "| entities | plain: read | features | fit | score | floor: read | load models | score |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        f, fc = r["floor"], r["floor"]["cpu_seconds"]
        if r["plain"]:
            p, pc = r["plain"]["seconds"], r["plain"]["cpu_seconds"]
            cells = [f"{p[k]:.1f} / {pc[k]:.1f}" for k in ("read", "features", "fit", "score")]
        else:
            cells = ["not run"] * 4
        cells += [f"{f[k]:.1f} / {fc[k]:.1f}" for k in ("read", "load_models", "score")]
        lines.append(f"| {r['entities']} | " + " | ".join(cells) + " |")
    lines.append("(last table: wall / CPU seconds, one process)")
    return "\n".join(lines)


def run(entities: list[int], *, metrics: int = 8, train_days: int = 7, quick: bool = False, interval: float = 0.5,
        spark_master: str | None = None, root: Path | None = None, keep: bool = False, spark=None,
        plain: bool = True, out: Path | None = None) -> dict:
    """The benchmark's entry point: figures of every fleet size (see the module docstring)."""
    base = {"spark_master": spark_master} if spark_master else {}
    owned = root is None
    root = Path(tempfile.mkdtemp(prefix="fleetwatch-scale-")) if owned else root
    meter = TreeMeter(interval)
    meter.start()
    load_start = os.getloadavg()
    own_spark = spark is None
    started = time.perf_counter()
    spark = spark or get_spark(Settings(home=root / "session", **base), "fleetwatch-scale")
    session_s = time.perf_counter() - started
    conf = spark.sparkContext.getConf()
    results = []
    try:
        for n in entities:
            home = root / f"n{n}"
            result = run_size(spark, n, metrics=metrics, train_days=train_days, home=home, meter=meter, base=base, quick=quick,
                              plain=plain)
            result["summary"] = summary(result)
            results.append(result)
            if out is not None:  # each size as soon as it is measured: a later size may not finish
                out.write_text(json.dumps({"results": results}, indent=2, default=str))
            if not keep:
                shutil.rmtree(home, ignore_errors=True)
    finally:
        meter.stop()
        if own_spark:
            spark.stop()
        if owned and not keep:
            shutil.rmtree(root, ignore_errors=True)
    return {
        "spark": {
            "version": spark.version, "master": conf.get("spark.master"),
            "driver_memory": conf.get("spark.driver.memory"),
            "max_result_size": conf.get("spark.driver.maxResultSize", "1g (default)"),
            "session_start_s": session_s,
        },
        "cpus": os.cpu_count(),
        "memory_gib": psutil.virtual_memory().total / 2**30,
        "load_start": list(load_start),
        "load_end": list(os.getloadavg()),
        "driver_lifetime_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "results": results,
    }


def plain_only(entities: int, *, metrics: int = 8, train_days: int = 7) -> dict:
    """The plain loop alone on the fleet ``run_size`` would generate (the same rows, seeds and
    parameters): for a size whose FleetWatch figures are already measured."""
    with tempfile.TemporaryDirectory(prefix="fleetwatch-plain-") as root:
        settings = _settings(Path(root), train_days, {})
        dataset = f"scale{entities}"
        days = [START + dt.timedelta(days=i) for i in range(train_days + 1)]
        _, spec = _generate(Path(root), train_days, {}, dataset, entities, metrics)
        load_start = os.getloadavg()
        plain = plain_loop.run(settings.lake_root, dataset, spec.metric_names, days[:-1], days[-1],
                               model_params(settings, spec), seed=settings.seed)
    return {"entities": entities, "metrics": metrics, "train_days": train_days, "plain": plain,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "load_start": list(load_start), "load_end": list(os.getloadavg())}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--metrics", type=int, default=8, help="metrics per entity (6 generated, the rest copies)")
    parser.add_argument("--train-days", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help=f"cut-down model parameters {QUICK} (a smoke run)")
    parser.add_argument("--spark-master", default=None, help="default: the settings' (local[*])")
    parser.add_argument("--interval", type=float, default=0.5, help="sampling interval of memory and CPU (s)")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary homes")
    parser.add_argument("--plain-only", action="store_true", help="only the plain loop, on the same generated fleet")
    parser.add_argument("--no-plain", action="store_true", help="leave the plain loop out (it holds every entity's "
                        "features in one process: about 6.5 GB at 1,000 entities)")
    args = parser.parse_args(argv)
    if args.plain_only:
        for n in args.entities:
            print(json.dumps(plain_only(n, metrics=args.metrics, train_days=args.train_days), default=str), flush=True)
        return
    figures = run(args.entities, metrics=args.metrics, train_days=args.train_days, quick=args.quick,
                  interval=args.interval, spark_master=args.spark_master, keep=args.keep, plain=not args.no_plain,
                  out=args.out)
    s = figures["spark"]
    print(f"Spark {s['version']} {s['master']}, driver memory {s['driver_memory']}, maxResultSize {s['max_result_size']}; "
          f"{figures['cpus']} CPUs, {figures['memory_gib']:.0f} GiB; load at start "
          f"{' '.join(f'{x:.2f}' for x in figures['load_start'])}, at end {' '.join(f'{x:.2f}' for x in figures['load_end'])}")
    print()
    print(table(figures["results"]))
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2, default=str))
        print(f"\nfigures written to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
