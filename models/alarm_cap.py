"""The alarm cap: an entity's minutes in alarm held to its alarm-share budget, night by night.

An entity whose normal has moved flags most of every night until the drift → retrain path adapts
it (``models.adaptation``), which takes nights and never happens for a deviation that is not a
clean level shift. Until then the alarm budget must still hold. So each night, per entity:

* the *uncapped* alarm is measured with the fitted thresholds (``alarm``): the incidents that
  would alert (flagged rows joined by ``models.incidents.max_step``, kept when they hold
  ``min_points`` rows or a severe one) and the minutes they cover, first to last row plus one
  sampling interval, as the alerts table counts them;
* when the uncapped minutes of tonight and the previous nights of the window exceed the budget
  share of those nights, both thresholds (smoothed and unsmoothed, so the short-event rule is
  capped too) are scaled by the smallest factor that brings tonight within the budget's minutes
  in no more alerts than the spec's ``alarm_budget`` or the uncapped night, whichever is more
  (``cap_scale``): capping never cuts one long alarm into many short ones, and an entity in alarm
  all night may still raise its budget of alerts.

The cap only binds on a night over the budget: an entity that is quiet tonight keeps its fitted
thresholds whatever its window holds. It keeps the most anomalous minutes of the night, measured
(with ``level_minutes``) against the night's own level around each row (``local_level``), so an
event that stands out of the drifted normal around it still alerts, even when the drift itself
swells higher elsewhere in the night; what it costs is the part of a long
alarm below the night's top minutes, and on a night of more events than the budget's alerts, the
events past them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from models.frames import epoch_ns
from models.incidents import max_step


@dataclass(frozen=True)
class AlertRule:
    """How flagged rows become alerts: the incident gap, the sampling interval, and the fewest
    flagged rows an incident needs unless one is severe (the spec's ``min_incident_minutes``)."""

    gap_minutes: int
    sampling_seconds: int
    min_points: int = 1


def exceedance(frame: pd.DataFrame, factor: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the largest factor by which both thresholds could be scaled and still flag it
    (``models.incidents.two_scale_flags`` flags exactly the rows above 1), and the same for the
    short-event rule alone (``raw_score / (factor * raw_threshold)``; 0 without it)."""
    score = frame["score"].to_numpy(dtype=float)
    threshold = frame["threshold"].to_numpy(dtype=float)
    severe = np.zeros(score.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        need = np.where(threshold > 0, score / threshold, np.where(score > threshold, np.inf, 0.0))
        if factor is not None:
            raw_thr = frame["raw_threshold"].to_numpy(dtype=float)
            raw = frame["raw_score"].to_numpy(dtype=float) / (factor * raw_thr)
            severe = np.where(np.isfinite(raw_thr) & (raw_thr > 0), raw, 0.0)
    big = np.finfo(float).max
    severe = np.nan_to_num(severe, nan=0.0, posinf=big)
    return np.maximum(np.nan_to_num(need, nan=0.0, posinf=big), severe), severe


def alarm(stamps: np.ndarray, need: np.ndarray, severe: np.ndarray, scale: float, rule: AlertRule) -> tuple[float, int]:
    """(minutes covered, incidents) of the alerts one entity's rows raise with both thresholds
    scaled by ``scale``; ``stamps`` are its timestamps in ns, in time order."""
    rows = np.flatnonzero(need > scale)
    if rows.size == 0:
        return 0.0, 0
    st = stamps[rows]
    new = np.r_[True, np.diff(st) > max_step(rule.gap_minutes, rule.sampling_seconds).value]
    group = np.cumsum(new) - 1
    points = np.bincount(group)
    kept = (points >= rule.min_points) | (np.bincount(group, weights=severe[rows] > scale) > 0)
    span = st[np.r_[new[1:], True]] - st[new]
    return float((span[kept].sum() / 60e9) + kept.sum() * rule.sampling_seconds / 60), int(kept.sum())


def cap_scale(
    stamps: np.ndarray, need: np.ndarray, severe: np.ndarray, rule: AlertRule, allowed_minutes: float,
    allowed_incidents: float = math.inf,
) -> float:
    """The smallest factor (at least 1) whose alerts cover at most ``allowed_minutes`` in at most
    ``allowed_incidents`` incidents. Minutes only fall as the factor rises, incidents nearly so (a
    higher factor can split one), so the candidates (the rows' own ``need`` values) are bisected;
    the factor returned always holds both."""

    def holds(scale: float) -> bool:
        minutes, incidents = alarm(stamps, need, severe, scale, rule)
        return minutes <= allowed_minutes and incidents <= allowed_incidents

    if holds(1.0):
        return 1.0
    candidates = np.unique(need[need > 1.0])  # flagging need > c for c in candidates; the top one flags nothing
    lo, hi = 0, candidates.size - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if holds(candidates[mid]):
            hi = mid
        else:
            lo = mid + 1
    return float(candidates[lo]) * (1 + 1e-12)  # strictly above the row it unflags, whatever the rounding


def local_level(values: np.ndarray, rows: int) -> np.ndarray:
    """Each row's level: the median of ``values`` over the ``rows`` rows centred on it, at least 1
    (``values`` are in units of the fitted threshold). An excursion shorter than half the window
    does not move it; a lasting change of level moves it at the change, since a row's window
    holds more rows of its own side."""
    level = pd.Series(values).rolling(rows, center=True, min_periods=1).median().to_numpy()
    return np.maximum(np.nan_to_num(level, nan=1.0), 1.0)


def apply_cap(
    frame: pd.DataFrame, *, factor: float | None, rule: AlertRule, budget_share: float, previous: list[float],
    alerts_per_night: float = 1.0, minutes_per_night: float = 1440.0, level_minutes: float | None = None,
) -> pd.DataFrame:
    """One entity's scored night (time order) with its thresholds capped where its window is over
    budget: the frame with :func:`cap_columns` set."""
    return frame.assign(**cap_columns(
        frame, factor=factor, rule=rule, budget_share=budget_share, previous=previous, alerts_per_night=alerts_per_night,
        minutes_per_night=minutes_per_night, level_minutes=level_minutes,
    ))


def cap_columns(
    frame: pd.DataFrame, *, factor: float | None, rule: AlertRule, budget_share: float, previous: list[float],
    alerts_per_night: float = 1.0, minutes_per_night: float = 1440.0, level_minutes: float | None = None,
) -> dict:
    """The columns :func:`apply_cap` sets on one entity's scored night (time order), as arrays and
    numbers for a caller that builds its frame once: ``threshold`` and ``raw_threshold`` capped
    where its window is over budget, ``alarm_cap`` (each row's factor on both thresholds, 1 on a
    night not capped), ``uncapped_alarm_minutes`` and ``uncapped_incidents``. ``previous`` holds
    the uncapped minutes of the window's earlier nights that were scored (none: tonight alone
    decides); a capped night raises at most ``alerts_per_night`` alerts, or as many as uncapped
    when that is more. With ``level_minutes``, a capped night measures each row against its own
    level (``local_level`` of the rows' ``need`` over that many minutes) before the night's factor
    is found, so the minutes kept are those that stand out most from the drifted normal around
    them, not the night's highest."""
    need, severe = exceedance(frame, factor)
    stamps = epoch_ns(frame["ts"])
    minutes, incidents = alarm(stamps, need, severe, 1.0, rule)
    factors = np.ones(len(frame))  # each row's factor on both thresholds
    if (minutes + sum(previous)) / ((1 + len(previous)) * minutes_per_night) > budget_share:
        if level_minutes:
            factors = local_level(need, max(1, round(level_minutes * 60 / rule.sampling_seconds)))
            need, severe = need / factors, severe / factors
        factors = factors * cap_scale(
            stamps, need, severe, rule, budget_share * minutes_per_night, max(incidents, alerts_per_night)
        )
    return {
        "threshold": frame["threshold"].to_numpy(dtype=float) * factors,
        "raw_threshold": frame["raw_threshold"].to_numpy(dtype=float) * factors,
        "alarm_cap": factors, "uncapped_alarm_minutes": minutes, "uncapped_incidents": float(incidents),
    }


def cap_nights(
    rows: pd.DataFrame, *, factor: float | None, rule: AlertRule, budget_share: float, window_nights: int,
    alerts_per_night: float = 1.0, level_minutes: float | None = None,
) -> pd.DataFrame:
    """One entity's scored nights (``dt``: the partition; fitted thresholds) capped night by night
    in order, each against the window of the nights before it, as the scoring job caps them."""
    out, uncapped = [], {}
    for day, night in rows.sort_values("ts").groupby("dt", sort=True):
        day = pd.Timestamp(day)
        previous = [m for d, m in uncapped.items() if 0 < (day - d).days < window_nights]
        capped = apply_cap(night.reset_index(drop=True), factor=factor, rule=rule, budget_share=budget_share,
                           previous=previous, alerts_per_night=alerts_per_night, level_minutes=level_minutes)
        uncapped[day] = float(capped["uncapped_alarm_minutes"].iloc[0])
        out.append(capped)
    return pd.concat(out, ignore_index=True) if out else rows
