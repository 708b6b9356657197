"""Fitting one isolation forest: scikit-learn's ``IsolationForest.fit`` against FleetWatch's
``models.iforest.grow_isolation_forest``, which grows the same trees with scikit-learn's own tree
builder without the per-tree estimator cloning and input checks. Both fit the same rows with the
same seed, interleaved repeat by repeat in this process; the table gives the median CPU-seconds,
their ratio and whether the two forests are equal node for node.

    .venv/bin/python -m benchmarks.forest_growth                       # 8 and 38 metrics' widths
    .venv/bin/python -m benchmarks.forest_growth --features 88 --rows 4000 --repeats 7
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
from sklearn.ensemble import IsolationForest

from models.iforest import grow_isolation_forest
from models.params import ModelParams


def same_forest(a: IsolationForest, b: IsolationForest) -> bool:
    """Every tree's node table, feature subset and seed equal."""
    return np.array_equal(a._seeds, b._seeds) and all(
        np.array_equal(x.tree_.__getstate__()["nodes"], y.tree_.__getstate__()["nodes"])
        and np.array_equal(fx, fy)
        for x, y, fx, fy in zip(a.estimators_, b.estimators_, a.estimators_features_, b.estimators_features_, strict=True)
    )


def run(args) -> None:
    params = ModelParams()
    trees, max_samples = params.iforest_n_estimators, params.iforest_max_samples
    print(f"{trees} trees of {max_samples} rows, {args.rows} training rows, {args.repeats} repeats, "
          f"load average {os.getloadavg()[0]:.1f}")
    print("| features | scikit-learn fit (CPU-s) | grown directly (CPU-s) | ratio | same forest |")
    print("|---:|---:|---:|---:|---|")
    rng = np.random.default_rng(0)
    for width in args.features:
        X = rng.normal(size=(args.rows, width))
        X[:, ::7] = np.round(X[:, ::7])  # some quantised columns, as counters are
        times: dict[str, list[float]] = {"sklearn": [], "grown": []}
        for repeat in range(args.repeats):
            t = time.process_time()
            theirs = IsolationForest(n_estimators=trees, max_samples=max_samples, random_state=repeat).fit(X)
            times["sklearn"].append(time.process_time() - t)
            t = time.process_time()
            ours = grow_isolation_forest(IsolationForest(n_estimators=trees, max_samples=max_samples, random_state=repeat), X)
            times["grown"].append(time.process_time() - t)
        a, b = statistics.median(times["sklearn"]), statistics.median(times["grown"])
        print(f"| {width} | {a:.3f} | {b:.3f} | {a / b:.2f}x | {same_forest(ours, theirs)} |")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, nargs="+", default=[88, 418], help="feature columns (8 / 38 metrics)")
    parser.add_argument("--rows", type=int, default=3456, help="training rows (3 days of minutes, less the held-out fifth)")
    parser.add_argument("--repeats", type=int, default=5)
    run(parser.parse_args())


if __name__ == "__main__":
    main()
