"""What an evaluation reads back from the platform's home: scores and raw partitions of the
local lake, and the alerts table, with timestamps as UTC."""

from __future__ import annotations

import pandas as pd

from fleetwatch.core.alerts_store import AlertsStore
from fleetwatch.core.lake import Lake, local_path
from fleetwatch.core.raw_location import raw_partition
from fleetwatch.core.specs import load_spec


def read_scores(settings, dataset: str, days) -> pd.DataFrame:
    """The scores partitions of ``days`` (local lake), timestamps as UTC, each row's night as ``dt``
    (without the ``incident`` column the night's incidents ride in)."""
    lake = Lake(settings.lake_root)
    frames = [pd.read_parquet(local_path(lake.partition("scores", dataset, d))).drop(columns="incident", errors="ignore")
              .assign(dt=d) for d in days]  # the incidents are the alerts table's to give
    scores = pd.concat(frames, ignore_index=True)
    scores["ts"] = as_utc(scores["ts"])
    return scores


def read_raw(settings, dataset: str, days) -> pd.DataFrame:
    """The raw partitions of ``days`` (local lake): what the reference detectors see, with the
    spec's entity and timestamp columns named ``entity_id`` and ``ts``."""
    lake = Lake(settings.lake_root)
    spec = load_spec(settings.specs_dir, dataset)
    raw = pd.concat([pd.read_parquet(local_path(raw_partition(lake, spec, d))) for d in days], ignore_index=True)
    raw = raw[spec.columns].rename(columns={spec.entity_column: "entity_id", spec.timestamp_column: "ts"})
    raw["ts"] = as_utc(raw["ts"])
    return raw.sort_values(["entity_id", "ts"], kind="mergesort").reset_index(drop=True)


def read_alerts(settings, dataset: str, days) -> pd.DataFrame:
    """The alerts of ``days`` from the alerts table, timestamps as UTC."""
    store = AlertsStore(settings.alerts_db_url)
    alerts = store.frame(dataset)
    store.dispose()
    alerts = alerts[alerts["dt"].isin(set(days))].reset_index(drop=True)
    for col in ("start_ts", "end_ts"):
        alerts[col] = as_utc(alerts[col])
    return alerts


def as_utc(values) -> pd.Series:
    """``values`` as a Series of nanosecond UTC timestamps."""
    return pd.to_datetime(pd.Series(values), utc=True).astype("datetime64[ns, UTC]")
