"""Bytes and load time of one isolation forest: FleetWatch's array format against skops.

One forest as the ensemble fits it (100 trees, 2,048 rows a tree) on random rows of ``--features``
columns, saved both ways, each loaded ``--repeats`` times in this process; prints bytes (raw and
deflated, as inside an entity archive), the mean load time and their ratios, with the load average.

    .venv/bin/python -m benchmarks.model_format
"""

from __future__ import annotations

import argparse
import os
import time
import zlib

import numpy as np
import skops.io as sio

from models.iforest import IForestDetector

TRUSTED = ["sklearn.tree._tree.Tree"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=88, help="columns (8 metrics x 11 features)")
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    load_start = os.getloadavg()[0]
    X = np.random.default_rng(0).normal(size=(args.rows, args.features))
    detector = IForestDetector(n_estimators=100, max_samples=2048, random_state=1).fit(X)
    ours = detector.to_bytes()
    theirs = sio.dumps({"forest": detector.forest_})

    def timed(load) -> float:
        started = time.perf_counter()
        for _ in range(args.repeats):
            load()
        return (time.perf_counter() - started) / args.repeats

    t_ours = timed(lambda: IForestDetector.from_bytes(ours))
    t_theirs = timed(lambda: sio.loads(theirs, trusted=TRUSTED))
    sizes = {name: (len(b), len(zlib.compress(b, 6))) for name, b in (("arrays", ours), ("skops", theirs))}
    print(f"one forest, 100 trees x 2048 rows, {args.features} features; load average at start {load_start:.1f}, "
          f"at end {os.getloadavg()[0]:.1f}")
    print("| format | bytes | deflated | load (s) |")
    print("|---|---:|---:|---:|")
    print(f"| arrays (npz) | {sizes['arrays'][0]:,} | {sizes['arrays'][1]:,} | {t_ours:.4f} |")
    print(f"| skops | {sizes['skops'][0]:,} | {sizes['skops'][1]:,} | {t_theirs:.4f} |")
    print(f"load: skops / arrays = {t_theirs / t_ours:.0f}x; deflated bytes: arrays / skops = "
          f"{sizes['arrays'][1] / sizes['skops'][1]:.2f}")


if __name__ == "__main__":
    main()
