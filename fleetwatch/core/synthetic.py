"""A synthetic server fleet with labelled anomalies and a drift event, written into the lake.

Every entity follows a latent daily load (its own peak hour, sharpness and day-to-day level);
the metrics derive from that load with their own levels and noise, so they move together the
way a server's do (traffic out follows traffic in, latency follows CPU). Into this, known
anomalies are injected and labelled beside the lake (never inside raw):

- ``spike``: 1-3 minutes of one metric far above its normal value;
- ``contextual``: 30-60 minutes around the entity's nightly trough behaving like its daytime peak;
- ``collective``: 20-90 minutes of a joint shift of 2-3 related metrics;
- ``drift``: a lasting +25-40 % level shift of 1-2 metrics for ~15 % of entities from a drift day.

Per-entity random streams derive from the seed and the entity's index alone, so reruns with the
same seed give identical data, and an entity's normal behaviour does not depend on the fleet size.
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import ValidationError
from scipy.signal import lfilter

from fleetwatch.core.errors import FleetWatchError, PartitionNotFound
from fleetwatch.core.lake import Lake, is_local, local_path, parse_day, write_pandas_partition
from fleetwatch.core.specs import DatasetSpec, MetricSpec, write_spec

MINUTES_PER_DAY = 1440
LABELS_FILE = "anomalies.parquet"
LABEL_COLUMNS = ["anomaly_id", "entity_id", "kind", "start_ts", "end_ts", "metrics"]
KINDS = ("spike", "contextual", "collective", "drift")

METRICS = (
    MetricSpec(name="cpu_pct", min=0, max=100),
    MetricSpec(name="mem_pct", min=0, max=100),
    MetricSpec(name="disk_io_mbps", min=0),
    MetricSpec(name="net_in_mbps", min=0),
    MetricSpec(name="net_out_mbps", min=0),
    MetricSpec(name="latency_ms", min=0),
)
_COL = {m.name: i for i, m in enumerate(METRICS)}
# Metrics that follow the daily load closely: what a contextual anomaly visibly moves.
_LOAD_DRIVEN = ("cpu_pct", "disk_io_mbps", "net_in_mbps", "net_out_mbps", "latency_ms")
# Related metrics that shift together in a collective anomaly, each with its story.
_COLLECTIVE_GROUPS = (
    ("cpu_pct", "latency_ms"),  # a runaway process: CPU saturates, requests queue
    ("mem_pct", "disk_io_mbps"),  # memory pressure: the host swaps
    ("cpu_pct", "net_in_mbps", "net_out_mbps"),  # a traffic flood
    ("disk_io_mbps", "net_out_mbps"),  # an unplanned bulk copy
)
_DRIFTABLE = ("cpu_pct", "mem_pct", "disk_io_mbps", "latency_ms")

_ANOMALIES_PER_ENTITY_DAY = 0.5
_KIND_PROBS = {"spike": 0.4, "contextual": 0.3, "collective": 0.3}
_DRIFT_FRACTION = 0.15
_GAP_MINUTES = 60  # quiet time kept between two anomalies of one entity


@dataclass(frozen=True)
class _Anomaly:
    kind: str
    start: int  # minute index from the first timestamp
    length: int  # minutes
    metrics: tuple[str, ...]
    magnitude: float  # in units of the metric's standard deviation (spike, collective)


def fleet_spec(dataset: str, entities: int) -> DatasetSpec:
    """The spec of a synthetic fleet; an invalid dataset name fails with the spec's rule."""
    try:
        return DatasetSpec(
            name=dataset,
            entity_column="entity_id",
            timestamp_column="ts",
            sampling_seconds=60,
            alarm_budget=1.0,
            min_rows=max(1, entities * MINUTES_PER_DAY // 2),
            metrics=list(METRICS),
        )
    except ValidationError as exc:
        reason = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
        raise FleetWatchError(f"dataset name {dataset!r} is not valid: {reason}") from None


def generate_fleet(
    settings,
    dataset: str,
    *,
    entities: int,
    days: int,
    start: dt.date | str,
    seed: int = 7,
    drift_day: int | None = None,
) -> dict:
    """Write a synthetic fleet's spec, raw daily partitions and anomaly labels; return a summary.

    Parameters
    ----------
    settings : Settings
        Where the lake and the specs folder are.
    dataset : str
        Dataset name (letters, digits and ``_``, starting with a letter).
    entities, days : int
        Fleet size and number of daily partitions (``dt=start`` onwards), both at least 1.
    start : datetime.date or str
        The first partition's date (``YYYY-MM-DD`` accepted).
    seed : int
        The same seed gives the same data.
    drift_day : int, optional
        Day index (1 .. days-1) from which drifting entities shift; default two thirds of ``days``.
        A one-day fleet has no drift event.

    Returns
    -------
    dict
        dataset, entities, days, first and last day, rows, anomalies by kind, drift entities,
        drift day and the paths written. A rerun replaces the dataset's partitions and labels.
    """
    if not isinstance(entities, Integral) or entities < 1:
        raise FleetWatchError(f"dataset {dataset!r}: entities must be an integer of at least 1, got {entities!r}")
    if not isinstance(days, Integral) or days < 1:
        raise FleetWatchError(f"dataset {dataset!r}: days must be an integer of at least 1, got {days!r}")
    spec = fleet_spec(dataset, entities)
    if days >= 2:
        drift_day = max(1, 2 * days // 3) if drift_day is None else drift_day
        if not 1 <= drift_day < days:
            raise FleetWatchError(f"dataset {dataset!r}: drift_day must lie in 1..{days - 1}, got {drift_day}")
    elif drift_day is not None:
        raise FleetWatchError(f"dataset {dataset!r}: a one-day fleet has no room for a drift day")
    lake = Lake(settings.lake_root)
    if not is_local(lake.root):
        raise FleetWatchError(f"generate writes to a local lake only; lake_root is {lake.root}")
    origin = pd.Timestamp(parse_day(start), tz="UTC")

    width = max(3, len(str(entities - 1)))
    ids = [f"srv-{i:0{width}d}" for i in range(entities)]
    n = days * MINUTES_PER_DAY
    values = np.empty((entities, n, len(METRICS)), dtype=np.float64)
    labels: list[tuple] = []
    drift = _drift_plan(seed, entities, drift_day)
    lows = np.array([m.min for m in METRICS])
    highs = np.array([m.max for m in METRICS])
    for e, entity in enumerate(ids):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0, e)))
        peak = rng.uniform(9, 19) * 60  # the entity's busiest minute of the day (UTC)
        anomalies = _place_anomalies(rng, days, peak)
        series = _entity_series(rng, days, peak, anomalies, drift.get(e, ()), drift_day)
        values[e] = np.clip(series, lows, highs)
        for a in anomalies:
            labels.append((entity, a.kind, a.start, a.start + a.length - 1, ",".join(a.metrics)))
        if e in drift:
            labels.append((entity, "drift", drift_day * MINUTES_PER_DAY, n - 1, ",".join(m for m, _ in drift[e])))

    raw_days = [origin + pd.Timedelta(days=d) for d in range(days)]
    minutes = np.arange(MINUTES_PER_DAY)
    for d, day in enumerate(raw_days):
        block = values[:, d * MINUTES_PER_DAY : (d + 1) * MINUTES_PER_DAY, :].reshape(-1, len(METRICS))
        frame = pd.DataFrame(
            {
                "entity_id": pd.Series(np.repeat(np.array(ids, dtype=object), MINUTES_PER_DAY), dtype=object),
                "ts": pd.date_range(day, periods=MINUTES_PER_DAY, freq="min")[np.tile(minutes, entities)],
                **{name: block[:, j] for j, name in enumerate(spec.metric_names)},
            }
        )
        write_pandas_partition(lake, frame, lake.raw(dataset, day.date()))
    label_frame = _label_frame(labels, origin)
    labels_file = _write_labels(lake, dataset, label_frame)
    spec_file = write_spec(settings.specs_dir, spec)
    _drop_stale_partitions(lake, dataset, {day.date() for day in raw_days})

    counts = label_frame["kind"].value_counts()
    return {
        "dataset": dataset,
        "entities": entities,
        "days": days,
        "first_day": raw_days[0].date().isoformat(),
        "last_day": raw_days[-1].date().isoformat(),
        "rows": entities * n,
        "anomalies": {kind: int(counts.get(kind, 0)) for kind in KINDS},
        "drift_entities": [ids[e] for e in sorted(drift)],
        "drift_day": raw_days[drift_day].date().isoformat() if drift else None,
        "paths": {"spec": str(spec_file), "raw": lake.raw(dataset), "labels": str(labels_file)},
    }


def load_labels(settings, dataset: str) -> pd.DataFrame:
    """The labelled anomalies of a generated dataset (start and end inclusive, UTC)."""
    path = local_path(Lake(settings.lake_root).labels(dataset)) / LABELS_FILE
    if not path.is_file():
        raise PartitionNotFound(f"no anomaly labels for dataset {dataset!r} at {path} (run `fleetwatch generate` first)")
    return pd.read_parquet(path)


def _drift_plan(seed: int, entities: int, drift_day: int | None) -> dict[int, tuple[tuple[str, float], ...]]:
    """Which entities drift, in which metrics and by what factor (a fleet-level stream)."""
    if drift_day is None:
        return {}
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))
    count = max(1, round(_DRIFT_FRACTION * entities))
    chosen = np.sort(rng.choice(entities, size=count, replace=False))
    plan = {}
    for e in chosen:
        metrics = rng.choice(_DRIFTABLE, size=int(rng.integers(1, 3)), replace=False)
        plan[int(e)] = tuple((str(m), float(rng.uniform(1.25, 1.4))) for m in sorted(metrics, key=_COL.get))
    return plan


def _place_anomalies(rng: np.random.Generator, days: int, peak: float) -> list[_Anomaly]:
    """Non-overlapping anomalies of one entity, none on the first day (kept as clean history)."""
    if days < 2:
        return []
    n = days * MINUTES_PER_DAY
    count = rng.poisson(_ANOMALIES_PER_ENTITY_DAY * days)
    kinds = rng.choice(list(_KIND_PROBS), size=count, p=list(_KIND_PROBS.values()))
    trough = (peak + MINUTES_PER_DAY / 2) % MINUTES_PER_DAY
    placed: list[_Anomaly] = []
    for kind in kinds:
        for _ in range(20):
            if kind == "spike":
                length, metrics = int(rng.integers(1, 4)), (str(rng.choice([m.name for m in METRICS])),)
                begin = int(rng.integers(MINUTES_PER_DAY, n - length + 1))
                magnitude = rng.uniform(6, 10)
            elif kind == "collective":
                length, metrics = int(rng.integers(20, 91)), _COLLECTIVE_GROUPS[rng.integers(len(_COLLECTIVE_GROUPS))]
                begin = int(rng.integers(MINUTES_PER_DAY, n - length + 1))
                magnitude = rng.uniform(2.5, 4)
            else:
                length, metrics, magnitude = int(rng.integers(30, 61)), _LOAD_DRIVEN, 0.0
                day = int(rng.integers(1, days))  # windows spilling out of the fleet's days are redrawn below
                begin = int(day * MINUTES_PER_DAY + trough - length // 2 + rng.integers(-20, 21))
            end = begin + length
            if begin < MINUTES_PER_DAY or end > n:
                continue
            if all(end + _GAP_MINUTES <= a.start or a.start + a.length + _GAP_MINUTES <= begin for a in placed):
                placed.append(_Anomaly(str(kind), begin, length, tuple(metrics), float(magnitude)))
                break
    return sorted(placed, key=lambda a: a.start)


def _ar1(rng: np.random.Generator, n: int, phi: float, sigma: float) -> np.ndarray:
    """Stationary AR(1) noise: slow wander rather than independent jitter."""
    shocks = rng.normal(0.0, sigma, n)
    shocks[0] /= math.sqrt(1 - phi**2)
    return lfilter([1.0], [1.0, -phi], shocks)


def _entity_series(
    rng: np.random.Generator,
    days: int,
    peak: float,
    anomalies: list[_Anomaly],
    drift: tuple[tuple[str, float], ...],
    drift_day: int | None,
) -> np.ndarray:
    """One entity's metrics (minutes x metrics), anomalies and drift included, before clipping."""
    n = days * MINUTES_PER_DAY
    minute = np.arange(n) % MINUTES_PER_DAY
    sharpness = rng.uniform(1.0, 2.5)
    profile = ((1 + np.cos(2 * np.pi * (minute - peak) / MINUTES_PER_DAY)) / 2) ** sharpness
    for a in anomalies:
        if a.kind == "contextual":  # the nightly trough behaves like the daytime peak
            profile[a.start : a.start + a.length] = rng.uniform(0.85, 1.0)
    day_level = np.repeat(rng.normal(1.0, 0.03, days), MINUTES_PER_DAY)
    load = np.clip(profile * day_level + _ar1(rng, n, 0.95, 0.01), 0.0, None)

    x = np.empty((n, len(METRICS)))
    cpu = rng.uniform(5, 20) + rng.uniform(15, 40) * load + rng.normal(0, rng.uniform(1, 3), n)
    net_in = rng.uniform(20, 200) * (0.2 + 0.8 * load) * (1 + rng.normal(0, 0.05, n))
    x[:, _COL["cpu_pct"]] = cpu
    x[:, _COL["mem_pct"]] = rng.uniform(30, 60) + 8 * load + _ar1(rng, n, 0.99, 0.2)
    x[:, _COL["disk_io_mbps"]] = rng.uniform(5, 60) * (0.5 + 0.5 * load) * np.exp(rng.normal(0, 0.1, n))
    x[:, _COL["net_in_mbps"]] = net_in
    x[:, _COL["net_out_mbps"]] = rng.uniform(0.4, 1.5) * net_in * (1 + rng.normal(0, 0.04, n))
    latency = rng.uniform(5, 40) * (1 + 3 * (np.clip(cpu, 0, 100) / 100) ** 2)  # queueing grows with CPU
    x[:, _COL["latency_ms"]] = latency * (1 + rng.normal(0, 0.03, n))

    if drift:
        begin = drift_day * MINUTES_PER_DAY
        for metric, factor in drift:
            x[begin:, _COL[metric]] *= factor
    scale = x.std(axis=0)
    for a in anomalies:
        if a.kind in ("spike", "collective"):
            cols = [_COL[m] for m in a.metrics]
            x[a.start : a.start + a.length, cols] += a.magnitude * scale[cols]
    return x


def _label_frame(labels: list[tuple], start: pd.Timestamp) -> pd.DataFrame:
    """Labels as a frame: one row per anomaly, inclusive UTC bounds, ids numbered per entity."""
    frame = pd.DataFrame(labels, columns=["entity_id", "kind", "start", "end", "metrics"])
    frame["start_ts"] = start + pd.to_timedelta(frame["start"].astype("int64"), unit="min")
    frame["end_ts"] = start + pd.to_timedelta(frame["end"].astype("int64"), unit="min")
    frame = frame.sort_values(["entity_id", "start_ts", "kind"], ignore_index=True)
    number = frame.groupby("entity_id").cumcount() + 1
    frame["anomaly_id"] = frame["entity_id"] + "-a" + number.astype(str).str.zfill(3)
    return frame[LABEL_COLUMNS].astype({c: object for c in ("anomaly_id", "entity_id", "kind", "metrics")})


def _write_labels(lake: Lake, dataset: str, frame: pd.DataFrame) -> Path:
    """Replace the dataset's label file atomically (write beside it, then rename)."""
    folder = local_path(lake.labels(dataset))
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / LABELS_FILE
    tmp = folder / f".{LABELS_FILE}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        frame.to_parquet(tmp, index=False, coerce_timestamps="us")
        tmp.replace(final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return final


def _drop_stale_partitions(lake: Lake, dataset: str, keep: set[dt.date]) -> None:
    """Remove raw partitions of an earlier, longer run so raw and labels describe the same days."""
    for day in lake.days(lake.raw(dataset)):
        if day not in keep:
            lake.discard(lake.raw(dataset, day))
