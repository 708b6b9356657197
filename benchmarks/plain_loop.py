"""The plain per-entity loop a data scientist writes, as the yardstick for FleetWatch's cost.

One process, one thread: pandas reads the raw lake partitions, computes each entity's rolling
features with the pandas function FleetWatch's Spark tasks run (``feature_store.transforms``:
the values, 5/15/60-minute means, standard deviations and z-scores, and the rate of change),
then entity by entity fits the same
detector set FleetWatch fits with scikit-learn and torch directly, and scores the night's day
(right after fitting, so that only one entity's models are held at a time):

- a robust scaler (median and IQR, clipped) on the first 80 % of the rows, the rest held out;
- an IsolationForest and a dense autoencoder on every feature column, and the same pair on the
  columns without each ``ModelParams.subspaces`` entry (four pairs by default);
- the normal-range detector (each metric's distance outside its 0.5-99.5 % range, in spreads);
- each member's raw scores smoothed, ranked against its held-out scores, combined by a weighted
  mean, and a threshold from the held-out combined scores.

Hyper-parameters (trees, rows per tree, network widths, epochs, batch, learning rate, training
rows, hold-out share, smoothing) are read from a ``ModelParams``, so both sides fit the same
models on the same rows; fitting and scoring are this module's own code. :func:`run` times reading,
features, fitting and scoring separately.

    .venv/bin/python -m benchmarks.plain_loop --lake .fleetwatch/lake --dataset demo \\
        --metrics cpu_pct mem_pct --train 2026-01-01 2026-01-07 --night 2026-01-08
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.ensemble import IsolationForest

from feature_store.transforms import entity_features
from feature_store.views import FeatureView
from models.params import ModelParams


def read_raw(lake_root: str, dataset: str, days: list[dt.date]) -> pd.DataFrame:
    """The raw partitions of ``days``, concatenated (a local lake)."""
    frames = [pd.read_parquet(Path(lake_root) / "raw" / dataset / f"dt={d.isoformat()}") for d in days]
    return pd.concat(frames, ignore_index=True)


def _statistic(column: str) -> str:
    return "value" if "__" not in column else column.rsplit("__", 1)[1].split("_", 1)[0]


def member_columns(columns: list[str], subspaces: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Feature columns of each pair: all of them, then those without each subspace's statistics."""
    stats = np.array([_statistic(c) for c in columns])
    members = {"all": np.arange(len(columns))}
    for entry in subspaces:
        keep = np.flatnonzero(~np.isin(stats, entry.split("+")))
        if 0 < keep.size < len(columns):
            members[entry] = keep
    return members


class Autoencoder(torch.nn.Module):
    def __init__(self, n: int, hidden: int, bottleneck: int):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(n, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, bottleneck),
            torch.nn.Linear(bottleneck, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, n),
        )

    def forward(self, x):
        return self.net(x)


def fit_autoencoder(X: np.ndarray, params: ModelParams, seed: int) -> Autoencoder:
    torch.manual_seed(seed)
    model = Autoencoder(X.shape[1], params.ae_hidden, params.ae_bottleneck)
    optimizer = torch.optim.Adam(model.parameters(), lr=params.ae_lr)
    data = torch.from_numpy(X.astype(np.float32))
    generator = torch.Generator().manual_seed(seed)
    for _ in range(params.ae_epochs):
        for batch in torch.randperm(len(data), generator=generator).split(params.ae_batch_size):
            x = data[batch]
            loss = ((model(x) - x) ** 2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model


def ae_errors(model: Autoencoder, X: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        x = torch.from_numpy(X.astype(np.float32))
        return ((model(x) - x) ** 2).numpy()


def smooth(values: np.ndarray, points: int) -> np.ndarray:
    return pd.Series(values).rolling(points, center=True, min_periods=1).mean().to_numpy()


@dataclass
class EntityModels:
    center: np.ndarray
    scale: np.ndarray
    members: dict  # name -> (kind, columns, detector)
    low: np.ndarray
    high: np.ndarray
    median: np.ndarray
    spread: np.ndarray
    held: dict  # name -> sorted held-out raw scores
    threshold: float


def _range_score(m: EntityModels, values: np.ndarray) -> np.ndarray:
    outside = np.maximum(m.low - values, 0) + np.maximum(values - m.high, 0)
    return np.nansum(outside / m.spread + 1e-3 * np.abs(values - m.median) / m.spread, axis=1)


def _raw_scores(m: EntityModels, Z: np.ndarray, values: np.ndarray, points: int) -> dict[str, np.ndarray]:
    raw = {}
    for name, (kind, cols, detector) in m.members.items():
        score = -detector.score_samples(Z[:, cols]) if kind == "iforest" else ae_errors(detector, Z[:, cols]).mean(axis=1)
        raw[name] = smooth(score, points)
    raw["range"] = smooth(_range_score(m, values), points)
    return raw


def _combined(m: EntityModels, raw: dict[str, np.ndarray], range_weight: float) -> np.ndarray:
    """Each member's score as -log10 of its tail share among the held-out scores; weighted mean."""
    calibrated, weights = [], []
    for name, values in raw.items():
        held = m.held[name]
        tail = 1 - np.searchsorted(held, values, side="right") / (len(held) + 1)
        calibrated.append(-np.log10(np.maximum(tail, 1 / (len(held) + 1))))
        weights.append(range_weight if name == "range" else 1.0)
    return np.average(np.vstack(calibrated), axis=0, weights=weights)


def fit_entity(frame: pd.DataFrame, features: list[str], metrics: list[str], params: ModelParams, seed: int) -> EntityModels:
    """The entity's scaler, pairs, normal range, calibration and threshold (rows in time order)."""
    X = frame[features].to_numpy(dtype=float)
    values = frame[metrics].to_numpy(dtype=float)
    cut = int(round(len(X) * (1 - params.holdout_fraction)))
    q25, center, q75 = np.percentile(X[:cut], [25, 50, 75], axis=0)
    scale = np.maximum(np.where(q75 > q25, q75 - q25, X[:cut].std(axis=0)), 1e-3)
    Z = np.clip((X - center) / scale, -10, 10)
    train = Z[np.unique(np.linspace(0, cut - 1, min(cut, params.max_train_rows)).round().astype(int))]
    members = {}
    for name, cols in member_columns(features, params.subspaces).items():
        forest = IsolationForest(
            n_estimators=params.iforest_n_estimators, max_samples=min(params.iforest_max_samples, len(train)),
            random_state=seed,
        ).fit(train[:, cols])
        members[f"iforest-{name}"] = ("iforest", cols, forest)
        members[f"autoencoder-{name}"] = ("autoencoder", cols, fit_autoencoder(train[:, cols], params, seed))
    low, high = np.quantile(values, params.explain.normal_range_quantiles, axis=0)
    p25, median, p75 = np.percentile(values[:cut], [25, 50, 75], axis=0)
    spread = np.maximum(np.where(p75 > p25, p75 - p25, values[:cut].std(axis=0)), 1e-3)
    model = EntityModels(center, scale, members, low, high, median, np.maximum(spread, np.median(spread)), {}, np.nan)
    raw = _raw_scores(model, Z[cut:], values[cut:], params.smooth_points)
    model.held = {name: np.sort(v) for name, v in raw.items()}
    model.threshold = float(np.quantile(_combined(model, raw, params.range_weight), 0.999))
    return model


def score_entity(model: EntityModels, frame: pd.DataFrame, features: list[str], metrics: list[str],
                 params: ModelParams) -> pd.DataFrame:
    """Combined score, threshold and flag of each row, with the autoencoder's per-feature errors."""
    Z = np.clip((frame[features].to_numpy(dtype=float) - model.center) / model.scale, -10, 10)
    values = frame[metrics].to_numpy(dtype=float)
    score = _combined(model, _raw_scores(model, Z, values, params.smooth_points), params.range_weight)
    errors = ae_errors(model.members["autoencoder-all"][2], Z)
    out = pd.DataFrame({"entity_id": frame["entity_id"].to_numpy(), "ts": frame["ts"].to_numpy(), "score": score})
    out["flagged"] = score > model.threshold
    out["max_error"] = errors.max(axis=1)
    return out


def run(lake_root: str, dataset: str, metrics: list[str], train_days: list[dt.date], night: dt.date,
        params: ModelParams, seed: int = 42) -> dict:
    """Read, featurise, fit on ``train_days`` and score ``night``; wall and CPU seconds of each
    step (this process), rows."""
    torch.set_num_threads(1)
    clock = _Clock()
    raw = read_raw(lake_root, dataset, [*train_days, night])
    clock.lap("read")
    view = FeatureView("telemetry", 1, "entity_id", "ts", tuple(metrics))
    frames = {entity: entity_features(rows, view) for entity, rows in raw.groupby("entity_id", sort=True)}
    clock.lap("features")
    features = [c for c in next(iter(frames.values())).columns if c not in ("ts", "entity_id")]
    night_start = pd.Timestamp(night, tz="UTC")

    # each entity is scored right after it is fitted and its models dropped: holding every
    # entity's models until the night is scored ran a 1,000-entity fleet out of 24 GiB
    scored, train_rows = [], 0
    for index, frame in enumerate(frames.values()):
        train = frame[frame["ts"] < night_start]
        with clock.part("fit"):
            model = fit_entity(train, features, metrics, params, seed + index)
        with clock.part("score"):
            scored.append(score_entity(model, frame[frame["ts"] >= night_start], features, metrics, params))
        train_rows += len(train)
    clock.restart()
    scores = pd.concat(scored, ignore_index=True)
    return {
        "entities": len(frames),
        "features": len(features),
        "train_rows": train_rows,
        "scored_rows": len(scores),
        "flagged_rows": int(scores["flagged"].sum()),
        "seconds": clock.wall,
        "cpu_seconds": clock.cpu,
    }


class _Clock:
    """Wall and CPU seconds (this process) of consecutive laps, by name."""

    def __init__(self):
        self.wall, self.cpu = {}, {}
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def lap(self, name: str) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        self.wall[name], self.cpu[name] = wall - self._wall, cpu - self._cpu
        self._wall, self._cpu = wall, cpu

    @contextmanager
    def part(self, name: str):
        """Add the block's seconds to ``name`` (steps that alternate entity by entity)."""
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        self.wall[name] = self.wall.get(name, 0.0) + time.perf_counter() - wall
        self.cpu[name] = self.cpu.get(name, 0.0) + time.process_time() - cpu

    def restart(self) -> None:
        """The next lap starts now (after timed parts)."""
        self._wall, self._cpu = time.perf_counter(), time.process_time()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lake", required=True, help="local lake root")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--metrics", nargs="+", required=True, help="metric columns of the raw partitions")
    parser.add_argument("--train", nargs=2, type=dt.date.fromisoformat, required=True, metavar=("FIRST", "LAST"))
    parser.add_argument("--night", type=dt.date.fromisoformat, required=True)
    args = parser.parse_args(argv)
    first, last = args.train
    days = [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]
    result = run(args.lake, args.dataset, args.metrics, days, args.night, ModelParams())
    print(result)


if __name__ == "__main__":
    main()
