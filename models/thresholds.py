"""Thresholds from an alarm budget: how many incidents per entity and day people accept."""

from __future__ import annotations

from bisect import bisect_left

import numpy as np
import pandas as pd

from models.frames import epoch_ns
from models.incidents import max_step


def threshold_for_budget(
    scores: np.ndarray,
    ts: np.ndarray,
    *,
    budget_per_day: float,
    gap_minutes: int,
    sampling_seconds: int,
    entities: np.ndarray | None = None,
    floor_quantile: float = 0.5,
) -> float:
    """The lowest threshold whose incidents stay within the budget on held-out scores.

    A point is flagged when its score is strictly above the threshold; flagged points form
    incidents by the rule of ``incidents.max_step``. The incident count is not monotone in the
    threshold (lowering it can merge two incidents into one), so the search walks the candidates
    (the unique scores at or above ``floor_quantile``) from the top down and stops at the first
    one that breaks the budget: every threshold at or above the returned one honours it. Every
    incident counts here, however short, so a dataset's ``min_incident_minutes`` only ever lowers
    the alert rate below the budget (counting only the long ones let the search run down to the
    floor on SMD, where lower thresholds merge flagged rows into a few long incidents).

    Parameters
    ----------
    scores : ndarray of shape (n,)
        Held-out scores (higher = more anomalous).
    ts : array-like of shape (n,)
        Their timestamps.
    budget_per_day : float
        Incidents allowed per entity and day.
    gap_minutes, sampling_seconds : int
        The incident join rule.
    entities : array-like of shape (n,), optional
        Entity of each point, for pooled scores of several entities (the fleet model):
        incidents never span entities.
    floor_quantile : float
        Quantile of the scores below which no candidate lies, so a budget that nothing breaks
        still flags no more than about half the points.

    Returns
    -------
    float
        The threshold; the next lower candidate breaks the budget (unless the floor was reached).

    Notes
    -----
    The budget is ``budget_per_day`` times the entity-days the points cover, counted as
    ``n * sampling_seconds / 86400``: the span of a complete series, and the right share when
    the points are a row sample (the fleet model's), which shows only that share of the incidents.
    """
    scores = np.asarray(scores, dtype=float)
    if scores.ndim != 1 or scores.size == 0 or not np.isfinite(scores).all():
        raise ValueError("scores must be a non-empty 1-D array of finite values")
    if budget_per_day <= 0:
        raise ValueError(f"budget_per_day must be > 0, got {budget_per_day}")
    stamps = epoch_ns(ts)
    codes = np.zeros(scores.size, dtype=np.int64) if entities is None else pd.factorize(np.asarray(entities))[0]
    if stamps.size != scores.size or codes.size != scores.size:
        raise ValueError("scores, ts and entities must have the same length")

    allowed = budget_per_day * scores.size * sampling_seconds / 86_400

    order = np.lexsort((stamps, codes))
    step = max_step(gap_minutes, sampling_seconds).value
    t, e = stamps[order].tolist(), codes[order].tolist()
    ranked = scores[order]

    def joined(a: int, b: int) -> bool:
        return e[a] == e[b] and t[b] - t[a] <= step

    candidates = np.unique(scores[scores >= np.quantile(scores, floor_quantile)])
    by_score = np.argsort(-ranked, kind="stable")
    flagged: list[int] = []
    count, k = 0, 0
    for j in range(candidates.size - 1, 0, -1):
        # Lower the threshold from candidates[j] to candidates[j-1]: flag the points equal to candidates[j].
        while k < by_score.size and ranked[by_score[k]] >= candidates[j]:
            p = int(by_score[k])
            i = bisect_left(flagged, p)
            left = flagged[i - 1] if i > 0 else None
            right = flagged[i] if i < len(flagged) else None
            count += 1
            count -= left is not None and joined(left, p)
            count -= right is not None and joined(p, right)
            count += left is not None and right is not None and joined(left, right)
            flagged.insert(i, p)
            k += 1
        if count > allowed:
            return float(candidates[j])
    return float(candidates[0])
