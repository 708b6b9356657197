"""What a Spark start costs each nightly step: spark-submit per step against one Spark Connect server.

In one run, on one machine, with the 1-minute load average noted at every step:

1. Start-up per step. A trivial job (sum of 10,000 ids) as a spark-submit of its own (a new JVM and
   session), as a fresh Python process on the running Spark Connect server (what a DAG task pays
   with ``FLEETWATCH_SPARK_CONNECT_URL``: imports, a new Connect session, the work), and as the
   same work in an open session of that server.
2. The night's Spark steps (validate, features, drift check, score) for fleets of ``--entities``:
   each step as a spark-submit of ``jobs/<job>.py`` (today's DAG task), then each step as a fresh
   Python process running the same job on the Connect server (``jobs._entry.run_connected``, the
   Connect DAG task's body). Both paths write the same partitions; the scores they write are
   compared. The history day's features and the models are built first on the server
   (``--quick-train``: fewer epochs and rows; scoring costs the same).

    .venv/bin/python -m benchmarks.spark_startup                    # 20 and 200 entities
    .venv/bin/python -m benchmarks.spark_startup --entities 20 --repeats 2
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import psutil

from feature_store.pipeline import build_features
from fleetwatch.app import background, connect_server
from fleetwatch.app.orchestration import job_path, settings_env
from fleetwatch.core.lake import Lake
from fleetwatch.core.settings import Settings
from fleetwatch.core.spark import connect_session, spark_conf, spark_env
from fleetwatch.core.specs import load_spec
from fleetwatch.core.synthetic import generate_fleet
from models.training import model_params, train_models

START = dt.date(2026, 1, 1)
STEPS = (("validate", "validate_partition"), ("features", "build_features"),
         ("drift_check", "check_drift"), ("score", "score_partition"))
QUICK_TRAIN = {"ae_epochs": 3, "max_train_rows": 1000}
TRIVIAL = (
    "from fleetwatch.core.settings import get_settings\n"
    "from fleetwatch.core.spark import get_spark\n"
    "spark = get_spark(get_settings(), 'fleetwatch-trivial')\n"
    "print(spark.range(10000).selectExpr('sum(id)').collect()[0][0])\n"
)


def _env(settings: Settings) -> dict[str, str]:
    """A DAG task's environment: this one, the settings as ``FLEETWATCH_*``, no Connect mark."""
    env = {k: v for k, v in os.environ.items() if k != "SPARK_CONNECT_MODE_ENABLED"}
    return {**env, **spark_env(), **settings_env(settings)}


def _spark_submit(settings: Settings, app: str, *args: str) -> list[str]:
    cmd = [str(Path(sys.executable).parent / "spark-submit"), "--master", settings.spark_master]
    for key, value in spark_conf(settings).items():
        cmd += ["--conf", f"{key}={value}"]
    return [*cmd, app, *args]


def _connected(job: str, dataset: str, day: dt.date) -> list[str]:
    code = (
        "from fleetwatch.core.settings import get_settings\nfrom jobs._entry import run_connected\n"
        f"print(run_connected({job!r}, get_settings(), {dataset!r}, {day.isoformat()!r}))\n"
    )
    return [sys.executable, "-c", code]


def _timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Seconds ``cmd`` ran (it must succeed) and the 1-minute load average when it ended."""
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])}... failed ({done.returncode}): {done.stderr[-1500:]}")
    return seconds, os.getloadavg()[0]


def startup(classic: Settings, connected: Settings, script: Path, repeats: int) -> dict:
    """Median seconds of the trivial job per way of running it, and the loads seen."""
    runs = {"spark-submit": [], "Connect, new process": [], "Connect, open session": []}
    loads = []
    with connect_session(connected, "fleetwatch-trivial") as spark:
        for _ in range(repeats):
            for way in ("spark-submit", "Connect, new process"):
                cmd = _spark_submit(classic, str(script)) if way == "spark-submit" else [sys.executable, str(script)]
                seconds, load = _timed(cmd, _env(classic if way == "spark-submit" else connected))
                runs[way].append(seconds)
                loads.append(load)
            started = time.perf_counter()
            spark.range(10000).selectExpr("sum(id)").collect()
            runs["Connect, open session"].append(time.perf_counter() - started)
    return {"median": {k: statistics.median(v) for k, v in runs.items()}, "loads": loads}


def night(classic: Settings, connected: Settings, entities: int, quick: bool) -> dict:
    """The night's Spark steps through spark-submit, then through the Connect server."""
    dataset = f"startup{entities}"
    history, day = START, START + dt.timedelta(days=1)
    generate_fleet(classic, dataset, entities=entities, days=2, start=START, seed=classic.seed)
    with connect_session(connected, "fleetwatch-benchmark-setup") as spark:
        build_features(spark, connected, dataset, history)
        params = model_params(connected, load_spec(connected.specs_dir, dataset))
        train_models(spark, connected, dataset, history, params=params.model_copy(update=QUICK_TRAIN) if quick else params)
    lake = Lake(classic.lake_root)
    out = {"entities": entities, "submit": {}, "connect": {}, "loads": []}
    scores = {}
    for path, settings in (("submit", classic), ("connect", connected)):
        for step, job in STEPS:
            cmd = (_spark_submit(settings, job_path(job), "--dataset", dataset, "--date", day.isoformat())
                   if path == "submit" else _connected(job, dataset, day))
            seconds, load = _timed(cmd, _env(settings))
            out[path][step] = seconds
            out["loads"].append(load)
            _log(f"{entities} entities, {path}, {step}: {seconds:.1f} s (load {load:.1f})")
        frame = pd.read_parquet(lake.partition("scores", dataset, day))
        scores[path] = frame.sort_values(["entity_id", "ts"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(scores["submit"], scores["connect"], check_like=True)
    out["rows"], out["flagged"] = len(scores["connect"]), int(scores["connect"]["flagged"].sum())
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, nargs="+", default=[20, 200])
    parser.add_argument("--repeats", type=int, default=3, help="runs of the trivial job per way (median reported)")
    parser.add_argument("--full-train", action="store_true", help="train with the platform's parameters (slower)")
    args = parser.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="fleetwatch-startup-"))
    classic = Settings(home=root / "home", min_history_days=1, training_window_days=1)
    port = background.free_port()
    load_start = os.getloadavg()
    started = time.perf_counter()
    server = connect_server.start(classic, port=port, log=root / "connect.log")
    server_start = time.perf_counter() - started
    connected = classic.model_copy(update={"spark_connect_url": server.url})
    script = root / "trivial_job.py"
    script.write_text(TRIVIAL)
    try:
        first = startup(classic, connected, script, args.repeats)
        nights = [night(classic, connected, n, not args.full_train) for n in args.entities]
        jvm = sum(p.memory_info().rss for p in [psutil.Process(server.pid), *psutil.Process(server.pid).children(True)])
    finally:
        connect_server.stop(server.pid)
        shutil.rmtree(root, ignore_errors=True)

    print(f"{os.cpu_count()} CPUs, master {classic.spark_master}, driver memory {classic.spark_driver_memory}; "
          f"Connect server start {server_start:.1f} s, its resident memory at the end {jvm / 2**30:.2f} GiB; "
          f"load average at start {_load(load_start)}, at end {_load(os.getloadavg())}")
    print()
    print(f"Trivial job, median of {args.repeats} (load {min(first['loads']):.1f}-{max(first['loads']):.1f}):")
    for way, seconds in first["median"].items():
        print(f"  {way:<24} {seconds:6.2f} s")
    print()
    head = ["entities", "rows", "flagged", *[f"{s} submit / Connect (s)" for s, _ in STEPS], "night submit (s)",
            "night Connect (s)", "ratio", "load (1 min)"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---:|" * len(head))
    for r in nights:
        sub, con = sum(r["submit"].values()), sum(r["connect"].values())
        cells = [str(r["entities"]), f"{r['rows']:,}", str(r["flagged"]),
                 *[f"{r['submit'][s]:.1f} / {r['connect'][s]:.1f}" for s, _ in STEPS],
                 f"{sub:.1f}", f"{con:.1f}", f"{sub / con:.2f}x", f"{min(r['loads']):.1f}-{max(r['loads']):.1f}"]
        print("| " + " | ".join(cells) + " |")
    print()
    print("Each step is a new process, as a DAG task is; the scores both paths wrote are equal.")


def _load(values) -> str:
    return " ".join(f"{x:.2f}" for x in values)


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
