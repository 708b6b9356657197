"""Incidents: flagged points of one entity grouped into episodes, and their severity.

One rule decides whether two flagged points belong to the same incident (``max_step``); the
threshold search in ``thresholds.py`` counts incidents with the same rule. An incident with fewer
flagged points than the dataset's minimum (``DatasetSpec.min_incident_points``) raises no alert;
the threshold search counts those too, so the alerts users see stay within the alarm budget.
"""

from __future__ import annotations

import pandas as pd

# Severity bands on peak_score / threshold. Calibrated scores are -log10 tail probabilities, so
# a ratio r means the peak is r times as many decades rare as the threshold (threshold 3 = 1e-3).
SEVERITY_BANDS = ((2.0, "critical"), (1.5, "high"), (1.25, "medium"))


def max_step(gap_minutes: int, sampling_seconds: int) -> pd.Timedelta:
    """Largest time step between two flagged points of one incident.

    Two flagged points join when at most ``gap_minutes`` of unflagged time lies between them,
    i.e. when their timestamps differ by at most ``gap_minutes`` plus one sampling interval
    (``gap_minutes=0`` joins only adjacent samples).
    """
    if gap_minutes < 0 or sampling_seconds <= 0:
        raise ValueError(f"gap_minutes must be >= 0 and sampling_seconds > 0, got {gap_minutes}, {sampling_seconds}")
    return pd.Timedelta(minutes=gap_minutes) + pd.Timedelta(seconds=sampling_seconds)


def group_incidents(
    frame: pd.DataFrame,
    *,
    score_col: str = "score",
    flag_col: str = "flagged",
    ts_col: str = "ts",
    entity_col: str = "entity_id",
    gap_minutes: int,
    sampling_seconds: int,
    min_points: int = 1,
) -> pd.DataFrame:
    """Group the flagged rows of each entity into incidents.

    Parameters
    ----------
    frame : DataFrame
        Scored rows of one or more entities (any order).
    gap_minutes, sampling_seconds : int
        The join rule of ``max_step``: flagged rows of one entity closer than that in time
        belong to one incident, whatever lies between them.
    min_points : int
        Fewest flagged points an incident needs; smaller groups are dropped (a blip of a minute
        or two that the score smoothing carried over the threshold is not worth an alert).

    Returns
    -------
    DataFrame
        One row per incident, ordered by entity and start: ``entity_id``, ``start_ts``,
        ``end_ts`` (first and last flagged point), ``n_points`` (flagged points in it),
        ``peak_score`` and ``peak_ts`` (the highest score and when it happened).
    """
    if min_points < 1:
        raise ValueError(f"min_points must be >= 1, got {min_points}")
    step = max_step(gap_minutes, sampling_seconds)
    flagged = frame.loc[frame[flag_col].astype(bool), [entity_col, ts_col, score_col]]
    flagged = flagged.sort_values([entity_col, ts_col], kind="mergesort").reset_index(drop=True)
    new_entity = flagged[entity_col].ne(flagged[entity_col].shift())
    too_far = flagged[ts_col].diff() > step
    incident = (new_entity | too_far).cumsum()
    peak_rows = flagged.groupby(incident)[score_col].idxmax()
    grouped = flagged.groupby(incident)
    out = pd.DataFrame(
        {
            "entity_id": grouped[entity_col].first().to_numpy(),
            "start_ts": grouped[ts_col].min().to_numpy(),
            "end_ts": grouped[ts_col].max().to_numpy(),
            "n_points": grouped.size().to_numpy().astype("int64"),
            "peak_score": flagged.loc[peak_rows.to_numpy(), score_col].to_numpy(dtype=float),
            "peak_ts": flagged.loc[peak_rows.to_numpy(), ts_col].to_numpy(),
        }
    )
    for col in ("start_ts", "end_ts", "peak_ts"):
        out[col] = out[col].astype(frame[ts_col].dtype)
    return out[out["n_points"] >= min_points].reset_index(drop=True)


def severity(peak_score: float, threshold: float) -> str:
    """Severity of an incident from how far its peak lies above the threshold.

    Bands on ``ratio = peak_score / threshold``: below 1.25 ``low``, below 1.5 ``medium``,
    below 2 ``high``, otherwise ``critical``.
    """
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0 to rank severity, got {threshold}")
    ratio = peak_score / threshold
    for bound, name in SEVERITY_BANDS:
        if ratio >= bound:
            return name
    return "low"
