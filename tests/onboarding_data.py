"""A team's export in miniature: one CSV per entity, timestamp strings, 5-minute rows, gaps, one
entity that starts a day late, and anomalies injected on known metrics (with their labels)."""

from __future__ import annotations

import numpy as np
import pandas as pd

START = pd.Timestamp("2026-03-01", tz="UTC")
STEP_MIN = 5
ROWS_PER_DAY = 24 * 60 // STEP_MIN
ENTITIES = {"web-01": 0, "web-02": 0, "db-01": 1}  # entity -> first day (db-01 starts a day late)
# entity, first row, rows, metric, shift (in units of the metric's noise)
ANOMALIES = [  # both on the fourth day: three days of history, one night to catch them
    ("web-01", 3 * ROWS_PER_DAY + 120, 8, "cpu_pct", 40.0),
    ("db-01", 3 * ROWS_PER_DAY + 60, 8, "mem_mb", 900.0),
]
GAP = ("web-02", 2 * ROWS_PER_DAY + 30, 6)  # 30 minutes with no rows


def series(days: int, seed: int = 3) -> dict[str, pd.DataFrame]:
    """Each entity's rows (ts as UTC timestamps) over ``days`` days, anomalies injected."""
    rng = np.random.default_rng(seed)
    out = {}
    for i, (entity, first_day) in enumerate(ENTITIES.items()):
        n = days * ROWS_PER_DAY
        t = np.arange(n)
        cycle = np.sin(2 * np.pi * t / ROWS_PER_DAY)
        frame = pd.DataFrame({
            "ts": START + pd.to_timedelta(t * STEP_MIN, unit="min"),
            "cpu_pct": np.clip(30 + 10 * i + 8 * cycle + rng.normal(0, 1.0, n), 0, 100),
            "mem_mb": 2000 + 300 * i + 50 * cycle + rng.normal(0, 10, n),
            "requests": np.maximum(0, 200 + 80 * cycle + rng.normal(0, 5, n)).round().astype(int),
        })
        for ent, row, length, metric, shift in ANOMALIES:
            if ent == entity:
                frame.loc[row : row + length - 1, metric] += shift
        frame.loc[:, "cpu_pct"] = frame["cpu_pct"].clip(0, 100)
        if entity == GAP[0]:
            frame = frame.drop(index=[i for i in range(GAP[1], GAP[1] + GAP[2]) if i in frame.index])
        out[entity] = frame[frame["ts"] >= START + pd.Timedelta(days=first_day)].reset_index(drop=True)
    return out


def write_csvs(folder, days: int, *, shuffle: bool = True) -> list:
    """One ``<entity>.csv`` per entity (no entity column), rows in shuffled order; returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for entity, frame in series(days).items():
        text = frame.assign(ts=frame["ts"].dt.strftime("%Y-%m-%d %H:%M:%S")).rename(columns={"ts": "timestamp"})
        text["cpu_pct"] = text["cpu_pct"].round(3)
        text["mem_mb"] = text["mem_mb"].round(2)
        if shuffle:
            text = text.sample(frac=1.0, random_state=len(entity))
        path = folder / f"{entity}.csv"
        text.to_csv(path, index=False)
        paths.append(path)
    return paths


FAST = ("api-01", 1, 4, 3 * 1440 + 600, 20, "cpu_pct")  # entity, first day, day after its last, anomaly row, rows, metric


def write_minute_csv(folder, seed: int = 5):
    """``api-01.csv``: one row a minute from the second day to the end of the fourth (it starts and
    stops on other days than the 5-minute entities), 20 minutes of cpu +40 on the fourth; returns
    the path and its anomaly as a labels row."""
    entity, first, last, row, length, metric = FAST
    rng = np.random.default_rng(seed)
    t = np.arange(first * 1440, last * 1440)
    cycle = np.sin(2 * np.pi * t / 1440)
    frame = pd.DataFrame({
        "ts": START + pd.to_timedelta(t, unit="min"),
        "cpu_pct": np.clip(50 + 8 * cycle + rng.normal(0, 1.0, len(t)), 0, 100),
        "mem_mb": 4000 + 50 * cycle + rng.normal(0, 10, len(t)),
        "requests": np.maximum(0, 50 + 20 * cycle + rng.normal(0, 3, len(t))).round().astype(int),
    })
    at = row - first * 1440
    frame.loc[at : at + length - 1, metric] += 40.0
    text = frame.assign(ts=frame["ts"].dt.strftime("%Y-%m-%d %H:%M:%S")).rename(columns={"ts": "timestamp"})
    path = folder / f"{entity}.csv"
    text.round({"cpu_pct": 3, "mem_mb": 2}).to_csv(path, index=False)
    start = START + pd.Timedelta(minutes=row)
    label = {"entity_id": entity, "start": start, "end": start + pd.Timedelta(minutes=length - 1), "metrics": metric}
    return path, label


def labels_frame() -> pd.DataFrame:
    """The injected anomalies as a labels file holds them: entity_id, start, end (inclusive), metrics."""
    rows = []
    for entity, row, length, metric, _ in ANOMALIES:
        start = START + pd.Timedelta(minutes=row * STEP_MIN)
        rows.append({"entity_id": entity, "start": start, "end": start + pd.Timedelta(minutes=(length - 1) * STEP_MIN),
                     "metrics": metric})
    return pd.DataFrame(rows)
