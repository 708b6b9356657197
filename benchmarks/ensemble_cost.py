"""What the detector ensemble costs: one pair of detectors per entity against the ensembles.

``models.fitting.fit_bucket`` fits a bucket of entities (what one Spark training task runs) with
``ModelParams.subspaces`` empty and no normal-range detector (one forest and one autoencoder on
every feature column), with three pairs (two more, each without one window statistic) and with the
default (four pairs, the fourth without the level, and the normal-range detector);
``score_entity`` then scores one day of each entity. Rows have the default feature view's columns for ``--metrics`` metrics and a
daily cycle, so the shapes are those of a real fleet. The variants run in this process, interleaved
repeat by repeat, and the table gives medians, their ratio and the size of one entity's model.

    .venv/bin/python -m benchmarks.ensemble_cost                    # 4 entities, 38 metrics
    .venv/bin/python -m benchmarks.ensemble_cost --entities 8 --metrics 10 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import pandas as pd

from feature_store.views import FeatureView
from fleetwatch.core.specs import DatasetSpec, MetricSpec
from models.fitting import ModelParams, fit_bucket, score_entity

ROWS_PER_DAY = 1440


def fleet_rows(n_entities: int, n_metrics: int, days: int, seed: int = 0) -> tuple[pd.DataFrame, FeatureView]:
    """Minute rows of every entity with random stand-ins for the view's feature columns."""
    metrics = tuple(f"m{i}" for i in range(n_metrics))
    view = FeatureView(name="bench", version=1, entity_column="entity_id", timestamp_column="ts", metrics=metrics)
    rng = np.random.default_rng(seed)
    n = days * ROWS_PER_DAY
    ts = pd.date_range("2026-01-01", periods=n, freq="min", tz="UTC")
    cycle = np.sin(2 * np.pi * np.arange(n) / ROWS_PER_DAY)
    frames = []
    for e in range(n_entities):
        cols = {c: cycle * rng.normal() + rng.normal(size=n) for c in view.feature_columns}
        frames.append(pd.DataFrame({"entity_id": f"e{e:03d}", "ts": ts, **cols}))
    return pd.concat(frames, ignore_index=True), view


def run(args) -> None:
    train, view = fleet_rows(args.entities, args.metrics, args.days)
    day, _ = fleet_rows(args.entities, args.metrics, 1, seed=1)
    spec = DatasetSpec(name="bench", metrics=[MetricSpec(name=m) for m in view.metrics])
    cols = view.feature_columns
    common = dict(
        feature_cols=cols, feature_metric=[view.metric_of(c) for c in cols], metrics=list(view.metrics),
        spec=spec, random_state=42,
    )
    variants = {
        "one pair": ModelParams(subspaces=(), range_weight=0.0),
        "three pairs": ModelParams(subspaces=("mean", "std"), range_weight=0.0),
        "four pairs and the normal-range detector (default)": ModelParams(),
    }
    timing = {name: {"fit": [], "score": []} for name in variants}
    size = {}
    for _ in range(args.repeats):
        for name, params in variants.items():
            t = time.perf_counter()
            models = fit_bucket(train, params=params, **common)
            timing[name]["fit"].append(time.perf_counter() - t)
            t = time.perf_counter()
            for model in models:
                rows = day[day["entity_id"] == model.entity]
                score_entity(model, rows, feature_cols=cols, feature_metric=common["feature_metric"], fleet=None)
            timing[name]["score"].append(time.perf_counter() - t)
            size[name] = len(models[0].to_bytes())
    print(f"{args.entities} entities x {args.days} training days, {args.metrics} metrics ({len(cols)} feature columns), "
          f"{args.repeats} repeats, load average {os.getloadavg()[0]:.1f}")
    base = "one pair"
    print("| variant | fit (s) | score one day (s) | one entity's model (MB) | fit ratio | score ratio |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in variants:
        fit, score = statistics.median(timing[name]["fit"]), statistics.median(timing[name]["score"])
        fit_ratio = fit / statistics.median(timing[base]["fit"])
        score_ratio = score / statistics.median(timing[base]["score"])
        print(f"| {name} | {fit:.1f} | {score:.2f} | {size[name] / 1e6:.2f} | {fit_ratio:.2f}x | {score_ratio:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, default=4)
    parser.add_argument("--metrics", type=int, default=38)
    parser.add_argument("--days", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    run(parser.parse_args())


if __name__ == "__main__":
    main()
