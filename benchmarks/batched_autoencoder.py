"""Batched autoencoder training against a plain loop of single-entity fits, in one run.

For each fleet size, ``models.autoencoder.fit_batched`` trains all entities' autoencoders as one
stacked tensor program, and a Python loop fits ``AutoencoderDetector`` one entity after another
with the same shapes, epochs and per-entity seeds (``entity_seed``). Both run in this process,
interleaved repeat by repeat so a change in machine load hits both; the table gives the median of
the repeats, their ratio, and the largest weight difference between an entity's batched and
single model (they should agree to float rounding, so the comparison is like for like).

    .venv/bin/python -m benchmarks.batched_autoencoder                 # 16, 64, 256 entities
    .venv/bin/python -m benchmarks.batched_autoencoder --entities 8 32 --threads 1 default
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

from models.autoencoder import AutoencoderDetector, entity_seed, fit_batched

RUN_SEED = 42


def fleet(n_entities: int, n_rows: int, n_features: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Per-entity rows with a low-rank structure (an autoencoder has something to learn), scaled."""
    rng = np.random.default_rng(seed)
    rank = 6
    out = {}
    for e in range(n_entities):
        latent = rng.standard_normal((n_rows, rank))
        mixing = rng.standard_normal((rank, n_features)) / np.sqrt(rank)
        out[f"srv-{e:04d}"] = (latent @ mixing + 0.1 * rng.standard_normal((n_rows, n_features))).astype(np.float64)
    return out


def loop_fit(Xs: dict[str, np.ndarray], params: dict) -> dict[str, AutoencoderDetector]:
    """One single-entity fit after another, each seeded as ``fit_batched`` seeds that entity."""
    return {
        key: AutoencoderDetector(**params, random_state=entity_seed(RUN_SEED, key)).fit(X) for key, X in Xs.items()
    }


def max_weight_diff(a: dict[str, AutoencoderDetector], b: dict[str, AutoencoderDetector]) -> float:
    """Largest absolute difference of any weight of any entity between two fits."""
    return max(
        float(np.abs(a[key].weights_[name] - b[key].weights_[name]).max())
        for key in a
        for name in a[key].weights_
    )


def timed(fn, *args):
    started = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - started, result


def measure(n_entities: int, args, params: dict) -> dict:
    """Median seconds of both ways over ``args.repeats`` interleaved repeats, and the weight gap."""
    Xs = fleet(n_entities, args.rows, args.features)
    batched_s, loop_s, diff = [], [], 0.0
    for repeat in range(args.repeats):
        runs = [("batched", lambda: fit_batched(Xs, **params, random_state=RUN_SEED)), ("loop", lambda: loop_fit(Xs, params))]
        if repeat % 2:  # alternate which goes first
            runs.reverse()
        fits = {}
        for name, fn in runs:
            seconds, fits[name] = timed(fn)
            (batched_s if name == "batched" else loop_s).append(seconds)
        diff = max(diff, max_weight_diff(fits["batched"], fits["loop"]))
    batched, loop = statistics.median(batched_s), statistics.median(loop_s)
    return {"entities": n_entities, "batched": batched, "loop": loop, "ratio": loop / batched, "diff": diff}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--rows", type=int, default=2000, help="training rows per entity")
    parser.add_argument("--features", type=int, default=66, help="66 = the synthetic fleet's feature view")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads", nargs="+", default=["1"], help="torch thread counts to run under; 'default' = torch's own choice"
    )
    args = parser.parse_args(argv)

    default_threads = torch.get_num_threads()
    params = {"epochs": args.epochs}  # hidden, bottleneck, batch size, lr: AutoencoderDetector defaults
    template = AutoencoderDetector(**params)
    print(
        f"rows/entity {args.rows}, features {args.features}, epochs {args.epochs}, hidden {template.hidden}, "
        f"bottleneck {template.bottleneck}, batch {template.batch_size}; median of {args.repeats} repeats; "
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average at start {_load()}"
    )
    fit_batched(fleet(2, 300, args.features), **params, random_state=RUN_SEED)  # warm-up: first-call costs
    print()
    print("| torch threads | entities | batched (s) | loop (s) | loop / batched | max abs weight diff |")
    print("|---:|---:|---:|---:|---:|---:|")
    for threads in args.threads:
        n_threads = default_threads if threads == "default" else int(threads)
        torch.set_num_threads(n_threads)
        label = f"{n_threads} (default)" if threads == "default" else str(n_threads)
        for n_entities in args.entities:
            r = measure(n_entities, args, params)
            print(
                f"| {label} | {r['entities']} | {r['batched']:.2f} | {r['loop']:.2f} | {r['ratio']:.1f}x | {r['diff']:.1e} |",
                flush=True,
            )
    print(f"\nload average at end {_load()}")


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()
