"""Column conventions and row helpers shared by training, scoring and promotion.

Models see every dataset with the same two key columns, ``entity_id`` and ``ts``, whatever the
spec calls them; :func:`canonical` renames a Spark frame's columns to those.
"""

from __future__ import annotations

import functools
import os
import sys

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from fleetwatch.core.specs import DatasetSpec

ENTITY, TS = "entity_id", "ts"


def canonical(df, spec: DatasetSpec):
    """Rename the spec's entity and timestamp columns of a Spark frame to ``entity_id`` and ``ts``."""
    if spec.entity_column != ENTITY:
        df = df.withColumnRenamed(spec.entity_column, ENTITY)
    if spec.timestamp_column != TS:
        df = df.withColumnRenamed(spec.timestamp_column, TS)
    return df


def one_thread_per_task() -> None:
    """Spark runs one task per core: a library's own thread pool (numpy's BLAS, torch's) would only
    fight the other tasks. torch is not imported for it: scoring never needs torch, and a later
    import reads ``OMP_NUM_THREADS``. The BLAS limit is set once a process (about 1 ms a call)."""
    _limit_blas_once()
    os.environ["OMP_NUM_THREADS"] = "1"
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


@functools.cache
def _limit_blas_once() -> None:
    threadpool_limits(1)


def usable_rows(frame: pd.DataFrame, feature_cols, ts_col: str) -> pd.DataFrame:
    """Rows whose features are all finite, in time order."""
    X = frame[list(feature_cols)].to_numpy(dtype=float, na_value=np.nan)
    rows = frame.loc[np.isfinite(X).all(axis=1)]
    return rows.sort_values(ts_col, kind="mergesort").reset_index(drop=True)


def holdout_cut(n: int, holdout_fraction: float) -> int:
    """Rows before the held-out tail: at least one on each side when n >= 2."""
    return min(max(int(round(n * (1 - holdout_fraction))), 1), n - 1)


def even_rows(n: int, k: int) -> np.ndarray:
    """Indices of at most ``k`` rows spread evenly over ``n`` (all of them when n <= k)."""
    return np.unique(np.linspace(0, n - 1, min(n, k)).round().astype(int))


def utc_instant(ts) -> pd.Timestamp:
    """One timestamp as a UTC instant: a naive one is UTC (the sessions' zone), a zoned one converted."""
    ts = pd.Timestamp(ts)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


_NS_RANGE = (np.datetime64("1677-09-22"), np.datetime64("2262-04-11"))  # inside what int64 nanoseconds hold


def epoch_ns(ts) -> np.ndarray:
    """Timestamps as int64 nanoseconds since the epoch, whatever their stored unit: pandas keeps
    the unit it read (Parquet and Arrow give microseconds), and an integer view of ``us`` values
    read as nanoseconds would make every step 1,000 times shorter. Naive and zoned datetimes (a
    zoned Series or Index holds UTC instants, as pandas reads Parquet) are converted by numpy (a
    fortieth of pandas' cost, for a call made several times an entity); missing or out-of-range
    ones and text go through pandas, which converts or names them."""
    if isinstance(ts, pd.Series | pd.Index):  # zoned: ``.values`` are its UTC instants, naive (to_numpy() gives objects)
        values = ts.values if isinstance(ts.dtype, pd.DatetimeTZDtype) else ts.to_numpy()
    else:
        values = ts
    if isinstance(values, np.ndarray) and values.dtype.kind == "M" and values.size:
        if not np.isnat(values).any() and values.min() > _NS_RANGE[0] and values.max() < _NS_RANGE[1]:
            return values.astype("datetime64[ns]").view("int64")
    stamps = pd.Series(ts)
    if not pd.api.types.is_datetime64_any_dtype(stamps.dtype):  # already datetimes: no parsing (it walks every row)
        stamps = pd.to_datetime(stamps, utc=True)
    return stamps.dt.as_unit("ns").astype("int64").to_numpy()


def sampling_step(ts, default: int) -> int:
    """An entity's own sampling interval in seconds: the median step between its distinct
    timestamps, or ``default`` (the spec's) when it has fewer than two. Rows of a mixed fleet
    keep their own pace; counts of rows that stand for a span of time are scaled by it."""
    stamps = np.unique(epoch_ns(ts))
    if stamps.size < 2:
        return default
    return max(1, round(float(np.median(np.diff(stamps))) / 1e9))


def rows_at(rows: int, spec_seconds: int, step: int, least: int = 1) -> int:
    """``rows`` at the spec's sampling interval as rows at ``step`` seconds: the same span of time
    (at least ``least``); unchanged when the entity keeps the spec's interval."""
    return rows if step == spec_seconds else max(least, round(rows * spec_seconds / step))


def smooth(values: np.ndarray, points: int) -> np.ndarray:
    """Centred moving average over ``points`` rows (shorter at the ends)."""
    if points <= 1:
        return values
    return pd.DataFrame(values).rolling(points, center=True, min_periods=1).mean().to_numpy().reshape(values.shape)
