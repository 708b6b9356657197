"""The alarm cap: an entity's minutes in alarm held to its alarm-share budget, night by night.

An entity whose normal has moved flags most of every night until the drift → retrain path adapts
it (``models.adaptation``), which takes nights and never happens for a deviation that is not a
clean level shift. Until then the alarm budget must still hold. So each night, per entity:

* the *uncapped* minutes in alarm are measured with the fitted thresholds (``alarm_minutes``:
  flagged rows joined into incidents by ``models.incidents.max_step``, first to last row plus one
  sampling interval, as the alerts table counts them);
* when the uncapped minutes of tonight and the previous nights of the window, as a share of those
  nights, exceed the budget, both thresholds (smoothed and unsmoothed, so the short-event rule is
  capped too) are scaled by the smallest factor that brings tonight's minutes within the budget,
  in no more incidents than the spec's ``alarm_budget`` (``cap_scale``): capping must not cut one
  long alarm into many short ones. The cap counts every incident, however short, so the alerts that the
  ``min_incident_minutes`` rule keeps cover at most that.

The cap only binds on a night with more alarm than the budget: an entity that is quiet tonight
keeps its fitted thresholds whatever its window holds. It keeps the most anomalous rows of the
night, so an event that scores above the drifted normal still alerts; what it costs is the part
of a long alarm below the night's top minutes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from models.incidents import max_step


def exceedance(frame: pd.DataFrame, factor: float | None) -> np.ndarray:
    """Per row, the largest factor by which both thresholds could be scaled and still flag it:
    ``score / threshold``, or ``raw_score / (factor * raw_threshold)`` where the short-event rule
    applies (``models.incidents.two_scale_flags`` flags exactly the rows above 1)."""
    score = frame["score"].to_numpy(dtype=float)
    threshold = frame["threshold"].to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        need = np.where(threshold > 0, score / threshold, np.where(score > threshold, np.inf, 0.0))
        if factor is not None:
            raw_thr = frame["raw_threshold"].to_numpy(dtype=float)
            raw = frame["raw_score"].to_numpy(dtype=float) / (factor * raw_thr)
            need = np.maximum(need, np.where(np.isfinite(raw_thr) & (raw_thr > 0), raw, 0.0))
    return np.nan_to_num(need, nan=0.0, posinf=np.finfo(float).max)


def alarm_minutes(ts: np.ndarray, flagged: np.ndarray, gap_minutes: int, sampling_seconds: int) -> float:
    """Minutes covered by the incidents of one entity's flagged rows (``ts`` in time order)."""
    return _alarm(_stamps(ts), np.asarray(flagged, dtype=bool), gap_minutes, sampling_seconds)[0]


def _stamps(ts) -> np.ndarray:
    return pd.to_datetime(pd.Series(ts)).astype("int64").to_numpy()


def _alarm(stamps: np.ndarray, flagged: np.ndarray, gap_minutes: int, sampling_seconds: int) -> tuple[float, int]:
    """(minutes covered, incidents) of the flagged rows."""
    stamps = stamps[flagged]
    if stamps.size == 0:
        return 0.0, 0
    steps = np.diff(stamps)
    joined = steps[steps <= max_step(gap_minutes, sampling_seconds).value]
    incidents = steps.size - joined.size + 1
    return float(joined.sum() / 60e9 + incidents * sampling_seconds / 60), int(incidents)


def cap_scale(
    ts: np.ndarray, need: np.ndarray, allowed_minutes: float, gap_minutes: int, sampling_seconds: int,
    allowed_incidents: float = np.inf,
) -> float:
    """The smallest factor (at least 1) whose flags (``need > factor``) cover at most
    ``allowed_minutes`` in at most ``allowed_incidents`` incidents. Minutes only fall as the
    factor rises, incidents nearly so (a higher factor can split one), so the candidates (the
    rows' own ``need`` values) are bisected; the factor returned always holds both."""
    stamps = _stamps(ts)

    def holds(flags: np.ndarray) -> bool:
        minutes, incidents = _alarm(stamps, flags, gap_minutes, sampling_seconds)
        return minutes <= allowed_minutes and incidents <= allowed_incidents

    if holds(need > 1.0):
        return 1.0
    candidates = np.unique(need[need > 1.0])  # flagging need > c for c in candidates; the top one flags nothing
    lo, hi = 0, candidates.size - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if holds(need > candidates[mid]):
            hi = mid
        else:
            lo = mid + 1
    return float(candidates[lo]) * (1 + 1e-12)  # strictly above the row it unflags, whatever the rounding


def apply_cap(
    frame: pd.DataFrame, *, factor: float | None, budget_share: float, previous_minutes: list[float],
    gap_minutes: int, sampling_seconds: int, incidents_per_night: float = np.inf, minutes_per_night: float = 1440.0,
) -> pd.DataFrame:
    """One entity's scored night (time order) with its thresholds capped where the window is over
    budget; adds ``alarm_cap`` (the factor, 1 when not capped) and ``uncapped_alarm_minutes``.

    ``previous_minutes`` are the uncapped minutes in alarm of the window's earlier nights that
    were scored (none: tonight alone decides). A capped night also keeps to
    ``incidents_per_night`` (the spec's ``alarm_budget``), so that the cap does not cut one long
    alarm into many short ones.
    """
    need = exceedance(frame, factor)
    ts = frame["ts"].to_numpy()
    tonight = alarm_minutes(ts, need > 1.0, gap_minutes, sampling_seconds)
    nights = 1 + len(previous_minutes)
    share = (tonight + float(sum(previous_minutes))) / (nights * minutes_per_night)
    scale = 1.0
    if share > budget_share:
        scale = cap_scale(ts, need, budget_share * minutes_per_night, gap_minutes, sampling_seconds, incidents_per_night)
    return frame.assign(
        threshold=frame["threshold"] * scale, raw_threshold=frame["raw_threshold"] * scale,
        alarm_cap=scale, uncapped_alarm_minutes=tonight,
    )
