"""What publishing a night's alerts costs the driver as the night's alerts grow.

For each night size, an incidents partition of that many incidents is written to a temporary lake
(one incident an entity an hour, every metric ranked in ``contributions`` and in each hour's
``phases``, as the scoring job writes them), then ``publish_alerts`` runs in a fresh child
process, twice: the first publish of the night (every incident new) and a rerun of it (every
incident matched to its alert). Each is run with the night in batches of ``--batch-rows`` and
with the whole night as one batch (how publishing worked before batches). Per run: wall time,
the child's resident memory after its imports, and its peak (sampled every 5 ms); the difference is
what the publish itself held. A fresh PostgreSQL database (``--pg``) holds the alerts and is
dropped afterwards.

    .venv/bin/python -m benchmarks.publish_memory                        # 5,000 and 20,000 incidents
    .venv/bin/python -m benchmarks.publish_memory --incidents 5000 20000 80000 --metrics 38
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import sqlalchemy as sa

DAY = dt.date(2026, 1, 2)
DATASET = "bench"


def night(n_incidents: int, n_metrics: int, hours: int, seed: int = 0) -> pd.DataFrame:
    """``n_incidents`` incidents of ``hours`` hours, one an entity and hour of the day, spread
    over as many entities as that takes; rankings of ``n_metrics`` metrics."""
    rng = np.random.default_rng(seed)
    metrics = [f"m{i:02d}" for i in range(n_metrics)]
    per_entity = max(1, 24 // hours)
    rows = []
    for i in range(n_incidents):
        start = pd.Timestamp(DAY, tz="UTC") + pd.Timedelta(hours=(i % per_entity) * hours, minutes=int(rng.integers(0, 30)))
        end = start + pd.Timedelta(hours=hours) - pd.Timedelta(minutes=31)

        def ranked():
            values = rng.normal(size=n_metrics)
            return [{"metric": metrics[j], "value": float(values[j]), "baseline": float(values[j] / 2),
                     "error": float(abs(values[j]))} for j in np.argsort(-np.abs(values))]

        phases = [{"start_ts": (start + pd.Timedelta(hours=h)).isoformat(),
                   "end_ts": min(end, start + pd.Timedelta(hours=h + 1)).isoformat(),
                   "n_points": 60, "top_metrics": "m00,m01,m02", "contributions": ranked()} for h in range(hours)]
        first = ranked()
        rows.append({
            "dataset": DATASET, "entity_id": f"e{i // per_entity:06d}", "dt": DAY, "start_ts": start, "end_ts": end,
            "n_points": hours * 60 - 30, "peak_score": float(rng.uniform(1, 5)), "severity": "high", "threshold": 1.0,
            "top_metrics": ",".join(t["metric"] for t in first[:3]), "contributions": json.dumps(first),
            "phases": json.dumps(phases), "model_scope": "entity", "model_name": "bench-bundle", "model_version": "1",
            "feature_view": "bench@v1", "run_id": "run",
        })
    return pd.DataFrame(rows)


def _child(home: str, db_url: str, batch_rows: int, out) -> None:
    from fleetwatch.core.publishing import publish_alerts
    from fleetwatch.core.settings import Settings

    batches = {"publish_batch_rows": batch_rows} if "publish_batch_rows" in Settings.model_fields else {}  # older code: one batch
    settings = Settings(home=home, alerts_db_url=db_url, **batches)
    me = psutil.Process()
    base = peak = me.memory_info().rss  # after the imports (ru_maxrss would carry the parent's peak across exec)
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.wait(0.005):
            peak = max(peak, me.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    n = publish_alerts(settings, DATASET, DAY)
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    peak = max(peak, me.memory_info().rss)
    out.send({"alerts": n, "seconds": seconds, "base_mib": base / 2**20, "peak_mib": peak / 2**20})


def publish_in_child(home: Path, db_url: str, batch_rows: int) -> dict:
    ctx = multiprocessing.get_context("spawn")
    mine, theirs = ctx.Pipe()
    child = ctx.Process(target=_child, args=(str(home), db_url, batch_rows, theirs))
    child.start()
    result = mine.recv()
    child.join()
    return {**result, "held_mib": result["peak_mib"] - result["base_mib"]}


def run(sizes: list[int], n_metrics: int, hours: int, batch_rows: int, pg: str, whole: bool = True) -> list[dict]:
    from fleetwatch.core.lake import Lake, write_pandas_partition
    from fleetwatch.core.settings import Settings
    from fleetwatch.core.specs import DatasetSpec, MetricSpec, write_spec

    results = []
    admin = sa.create_engine(pg, isolation_level="AUTOCOMMIT")
    for size in sizes:
        frame = night(size, n_metrics, hours)
        for batch in (batch_rows, size) if whole else (batch_rows,):  # batches, then the whole night at once
            name = f"fleetwatch_bench_{uuid.uuid4().hex[:8]}"
            with admin.connect() as conn:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
            try:
                with tempfile.TemporaryDirectory(prefix="publish-bench-") as tmp:
                    home = Path(tmp)
                    settings = Settings(home=home)
                    write_spec(settings.specs_dir, DatasetSpec(
                        name=DATASET, metrics=[MetricSpec(name=f"m{i:02d}") for i in range(n_metrics)], sampling_seconds=60))
                    lake = Lake(settings.lake_root)
                    where = lake.partition("incidents", DATASET, DAY)
                    write_pandas_partition(lake, frame, where)
                    parquet_mib = sum(p.stat().st_size for p in Path(where).rglob("*.parquet")) / 2**20
                    url = pg.rsplit("/", 1)[0] + f"/{name}"
                    for kind in ("first", "rerun"):
                        r = publish_in_child(home, url, batch)
                        row = {"incidents": size, "metrics": n_metrics, "batch_rows": batch, "publish": kind,
                               "parquet_mib": round(parquet_mib, 1), "load": round(os.getloadavg()[0], 1), **r}
                        print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
                        results.append(row)
            finally:
                with admin.connect() as conn:
                    conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--incidents", type=int, nargs="+", default=[5000, 20000])
    parser.add_argument("--metrics", type=int, default=8)
    parser.add_argument("--hours", type=int, default=2, help="hours an incident lasts (one phase each)")
    parser.add_argument("--batch-rows", type=int, default=2000)
    parser.add_argument("--pg", default=os.environ.get("FLEETWATCH_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--no-whole", action="store_true", help="leave out the runs with the whole night as one batch")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    results = run(args.incidents, args.metrics, args.hours, args.batch_rows, args.pg, whole=not args.no_whole)
    print("\n| incidents | batch | publish | wall s | held MiB | peak MiB |\n|---:|---:|---|---:|---:|---:|")
    for r in results:
        print(f"| {r['incidents']:,} | {r['batch_rows']:,} | {r['publish']} | {r['seconds']:.1f} | {r['held_mib']:.0f} "
              f"| {r['peak_mib']:.0f} |")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
