"""CPU time of scoring one entity's day: isolation forests through scikit-learn's ``score_samples``
against ``IForestDetector``'s compiled walk of the same trees packed as arrays
(``models.packed_forest``; identical scores), in one run.

Fits a bucket of entities (the default ensemble: four forests each, 8 metrics, 88 feature columns,
one autoencoder epoch: scoring costs the same) and scores one day of each with ``score_entity``,
the two ways interleaved, in CPU seconds of this process (a loaded machine disturbs them less).

    .venv/bin/python -m benchmarks.forest_scoring --entities 4 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from benchmarks.ensemble_cost import fleet_rows
from fleetwatch.core.specs import DatasetSpec, MetricSpec
from models.entity_model import score_entity
from models.fitting import fit_bucket
from models.frames import one_thread_per_task
from models.iforest import IForestDetector
from models.params import FeatureLayout, ModelParams


def _sklearn_scores(self, X):
    return -self.forest_.score_samples(self._validate(X, reset=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, default=4)
    parser.add_argument("--metrics", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    one_thread_per_task()  # as a scoring task: numpy's BLAS and torch on one thread
    train, view = fleet_rows(args.entities, args.metrics, 3)
    day, _ = fleet_rows(args.entities, args.metrics, 1, seed=1)
    spec = DatasetSpec(name="bench", metrics=[MetricSpec(name=m) for m in view.metrics])
    layout = FeatureLayout.of(view)
    models = fit_bucket(train, layout=layout, spec=spec, params=ModelParams(ae_epochs=1), random_state=42)
    frames = {m.entity: day[day["entity_id"] == m.entity] for m in models}
    packed_walk = IForestDetector.score_samples
    cpu = {"scikit-learn score_samples": 0.0, "packed walk": 0.0}
    outputs = {}
    for _ in range(args.repeats):
        for name, method in (("scikit-learn score_samples", _sklearn_scores), ("packed walk", packed_walk)):
            IForestDetector.score_samples = method
            started = time.process_time()
            outputs[name] = [score_entity(m, frames[m.entity], layout, None)["score"].to_numpy() for m in models]
            cpu[name] += time.process_time() - started
    IForestDetector.score_samples = packed_walk
    same = all(np.array_equal(a, b) for a, b in zip(*outputs.values(), strict=True))
    per = {k: v / args.repeats / len(models) for k, v in cpu.items()}
    print(f"{len(models)} entities x {args.repeats} repeats, {args.metrics} metrics, load average {os.getloadavg()[0]:.1f}; "
          f"identical scores: {same}")
    for name, value in per.items():
        print(f"{name}: {value:.3f} CPU-s an entity-day")
    print(f"ratio: {per['scikit-learn score_samples'] / per['packed walk']:.2f}x")


if __name__ == "__main__":
    main()
