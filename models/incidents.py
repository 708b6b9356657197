"""Incidents: flagged points of one entity grouped into episodes, their severity and explanation.

One rule decides whether two flagged points belong to the same incident (``max_step``); the
threshold search in ``thresholds.py`` counts incidents with the same rule. An incident with fewer
flagged points than the dataset's minimum (``DatasetSpec.min_incident_points``) raises no alert
unless it is severe (``two_scale_flags``); the threshold search counts every incident, so the
rule only ever lowers the alert rate (severe short events aside).

Two time scales: scores are smoothed so that single-row noise raises nothing, which also dilutes a
spike of a few minutes. So a row is also flagged (``severe``) when its unsmoothed score
(``raw_score``) is ``short_event_factor`` times ``raw_threshold``, the unsmoothed score that
held-out rows reached about once a day (``models.fitting.daily_peak``), and an incident holding
such a row alerts however short it is. Unsmoothed noise goes far above the smoothed threshold (on
SMD often ten times), so the reference is the noise at its own time scale; calibrated scores count
decades of rarity, so a factor of 2 asks a row to be twice as many decades rare as the rarest
row of an ordinary day.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd

from models.explain import MetricProfile, ranked_metrics
from models.frames import ENTITY, TS, epoch_ns, utc_instant
from models.params import ExplainParams

DEFAULTS = ExplainParams()

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


def severe_rows(raw_score, raw_threshold, factor: float | None) -> np.ndarray:
    """Rows whose unsmoothed score exceeds ``factor`` times ``raw_threshold`` (none without a
    factor, or where the reference is NaN: a model saved before it was kept)."""
    raw = np.asarray(raw_score, dtype=float)
    if factor is None:
        return np.zeros(raw.shape, dtype=bool)
    if not factor > 0:
        raise ValueError(f"short_event_factor must be > 0, got {factor}")
    return raw > factor * np.asarray(raw_threshold, dtype=float)


def two_scale_flags(frame: pd.DataFrame, factor: float | None) -> pd.DataFrame:
    """Scored rows with ``severe`` (``severe_rows``) and ``flagged`` (smoothed score above the
    threshold, or severe): what the scoring job writes and the evaluation replays."""
    return frame.assign(**flag_columns(frame, factor))


def flag_columns(frame: pd.DataFrame, factor: float | None) -> dict[str, np.ndarray]:
    """The ``severe`` and ``flagged`` columns :func:`two_scale_flags` sets, as arrays, of a frame or
    of a mapping of its columns."""
    severe = severe_rows(frame["raw_score"], frame["raw_threshold"], factor)
    above = np.asarray(frame["score"], dtype=float) > np.asarray(frame["threshold"], dtype=float)
    return {"severe": severe, "flagged": above | severe}


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
    severe_col: str | None = None,
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
        or two that the score smoothing carried over the threshold is not worth an alert), unless
        one of their rows is severe.
    severe_col : str, optional
        Boolean column of severe rows (``two_scale_flags``): an incident holding one is kept
        whatever its length.

    Returns
    -------
    DataFrame
        One row per incident, ordered by entity and start: ``entity_id``, ``start_ts``,
        ``end_ts`` (first and last flagged point), ``n_points`` (flagged points in it),
        ``peak_score`` and ``peak_ts`` (the highest score and when it happened); with
        ``severe_col``, ``severe`` (whether it holds a severe row).
    """
    if min_points < 1:
        raise ValueError(f"min_points must be >= 1, got {min_points}")
    at, entities, scores, starts, ends, peaks, severe = _spans(
        frame, flag_col, entity_col, epoch_ns(frame[ts_col]), frame[score_col].to_numpy(dtype=float),
        frame[severe_col].to_numpy(dtype=bool) if severe_col else None, max_step(gap_minutes, sampling_seconds).value,
    )
    times = frame[ts_col]
    out = pd.DataFrame(
        {
            "entity_id": entities[starts],
            "start_ts": times.iloc[at[starts]].to_numpy(),  # rows in time order: the first is the earliest
            "end_ts": times.iloc[at[ends - 1]].to_numpy(),
            "n_points": (ends - starts).astype("int64"),
            "peak_score": scores[peaks],
            "peak_ts": times.iloc[at[peaks]].to_numpy(),
        }
    )
    keep = out["n_points"].to_numpy() >= min_points
    if severe_col:
        out["severe"] = severe
        keep |= severe
    for col in ("start_ts", "end_ts", "peak_ts"):
        out[col] = out[col].astype(times.dtype)
    return out[keep].reset_index(drop=True)


def _spans(frame: pd.DataFrame, flag_col: str, entity_col: str, stamps: np.ndarray, scores: np.ndarray,
           severe: np.ndarray | None, step: int):
    """:func:`group_incidents` on arrays: the flagged rows' positions in ``frame`` (by entity, then
    time), their entities and scores, and each incident's first and past-the-last index into
    them, its peak's index and (with ``severe``) whether it holds a severe row. Arrays, not frames:
    an entity's night holds a few incidents, and pandas' per-call overhead (masking, sorting,
    reindexing a frame) cost more than the grouping itself."""
    at = np.flatnonzero(frame[flag_col].to_numpy().astype(bool))
    entities, stamps = frame[entity_col].to_numpy()[at], stamps[at]
    codes = pd.factorize(entities, sort=True)[0] if len(at) else np.zeros(0, dtype=np.intp)
    codes = np.where(codes < 0, len(at), codes)  # a missing entity sorts last, as sort_values puts it
    if np.any(np.diff(codes) < 0) or np.any((np.diff(codes) == 0) & (np.diff(stamps) < 0)):
        order = np.lexsort((stamps, codes))  # stable: rows at one instant keep their order
        at, entities, stamps, codes = at[order], entities[order], stamps[order], codes[order]
    scores = scores[at]
    # an incident starts at an entity's first flagged row and after every step longer than the rule's
    breaks = (codes[1:] != codes[:-1]) | (np.diff(stamps) > step)
    bounds = np.r_[np.flatnonzero(np.r_[len(at) > 0, breaks]), len(at)]
    starts, ends = bounds[:-1], bounds[1:]
    peaks = np.array([a + _first_max(scores[a:b]) for a, b in zip(starts, ends, strict=True)], dtype=int)
    if severe is not None:
        severe = np.logical_or.reduceat(severe[at], starts) if len(starts) else np.zeros(0, dtype=bool)
    return at, entities, scores, starts, ends, peaks, severe


def _first_max(scores: np.ndarray) -> int:
    """Position of the first highest score, missing scores skipped (pandas' ``idxmax``)."""
    return int(np.nanargmax(scores)) if not np.isnan(scores).all() else 0


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


def incident_context(
    pdf: pd.DataFrame, start_ts, skip_minutes: int = 0, context_minutes: int = DEFAULTS.context_minutes
) -> pd.DataFrame:
    """An entity's rows in the ``context_minutes`` ending ``skip_minutes`` before ``start_ts``: the
    level an incident's metrics are compared with (``models.explain.incident_evidence``)."""
    return pdf[context_rows(epoch_ns(pdf[TS]), pd.Timestamp(start_ts).value, skip_minutes, context_minutes)]


def context_rows(stamps: np.ndarray, start_ns: int, skip_minutes: int, context_minutes: int) -> np.ndarray:
    """:func:`incident_context` as a mask over rows' epoch nanoseconds (``models.frames.epoch_ns``)."""
    end = start_ns - pd.Timedelta(minutes=skip_minutes).value
    return (stamps >= end - pd.Timedelta(minutes=context_minutes).value) & (stamps < end)


def incident_phases(rows: pd.DataFrame, phase_minutes: int) -> list[pd.DataFrame]:
    """An incident's rows (time order) cut into consecutive ``phase_minutes`` from its first row."""
    return [part for _, part in rows.groupby(phase_steps(epoch_ns(rows[TS]), phase_minutes), sort=True)]


def phase_steps(stamps: np.ndarray, phase_minutes: int) -> np.ndarray:
    """Each row's phase (0, 1, ...) of an incident whose rows' epoch nanoseconds are ``stamps``."""
    return (stamps - stamps[0]) // pd.Timedelta(minutes=phase_minutes).value


def entity_incidents(
    pdf: pd.DataFrame,
    metrics: list[str],
    baselines,
    spread,
    *,
    gap_minutes: int,
    sampling_seconds: int,
    ranges=None,
    min_points: int = 1,
    context_skip_minutes: int = 0,
    phase_minutes: int | None = None,
    explain: ExplainParams = DEFAULTS,
    short_event_factor: float | None = None,
) -> list[dict]:
    """Incidents of one entity's scored rows (time order), each with every metric ranked.

    Rows are flagged at two time scales (``two_scale_flags`` with ``short_event_factor``; the
    ``flagged`` column as it is when the frame has no ``raw_score``, or has the ``severe`` column
    that ``two_scale_flags`` adds: the scoring job flags once); incidents with fewer than
    ``min_points`` flagged rows and no severe row are left out (``group_incidents``).
    ``baselines``, ``spread`` and ``ranges`` are the entity's per-metric training medians, spreads
    and normal ranges, or callables returning them (looked up only when there is an incident). A
    metric's evidence is its largest move outside its normal range inside the incident, in units
    of its spread (``models.explain.deviations``; without ranges, its largest deviation from the
    median), plus a tenth of its move against the hour before the incident
    (``models.explain.incident_evidence``), the context ending ``context_skip_minutes`` before the
    first flagged row (the score smoothing window: rows that close may already be anomalous, the
    first flag can lag the onset by that much); without spreads (a bundle saved before they were
    kept), the mean of its normalised reconstruction errors (``err__<metric>``).

    Each incident's ``phases`` rank the metrics again on each ``phase_minutes`` (default
    ``explain.phase_minutes``) of the incident from its start, each against the hour before
    that phase: a long incident often moves from one cause to another (disk, then CPU), and one
    ranking over all its hours names whichever was largest.
    """
    phase_minutes = explain.phase_minutes if phase_minutes is None else phase_minutes
    if phase_minutes <= 0:
        raise ValueError(f"phase_minutes must be > 0, got {phase_minutes}")

    if min_points < 1:
        raise ValueError(f"min_points must be >= 1, got {min_points}")
    if "raw_score" in pdf and "severe" not in pdf:  # a frame two_scale_flags flagged already keeps its flags
        pdf = two_scale_flags(pdf, short_event_factor)
    # Arrays once per entity; each incident and phase is a mask over them (pandas indexing per
    # incident cost more than the explanation's arithmetic).
    stamps = epoch_ns(pdf[TS])
    scores = pdf["score"].to_numpy(dtype=float)
    at, entities, peak_scores, starts, ends, peaks, severe = _spans(  # as group_incidents groups them
        pdf, "flagged", ENTITY, stamps, scores, pdf["severe"].to_numpy(dtype=bool) if "severe" in pdf else None,
        max_step(gap_minutes, sampling_seconds).value,
    )
    keep = (ends - starts) >= min_points
    if severe is not None:
        keep |= severe
    if not keep.any():
        return []
    baselines = baselines() if callable(baselines) else baselines
    spread = spread() if callable(spread) else spread
    ranges = ranges() if callable(ranges) else ranges
    values = pdf[metrics].to_numpy(dtype=float)
    profile = MetricProfile.of(metrics, baselines, spread, ranges) if spread else None
    errors = None if spread else pdf[[f"err__{m}" for m in metrics]].to_numpy(dtype=float)

    def ranking(rows: np.ndarray) -> list[dict]:
        """Every metric ranked over the rows ``rows`` (positions in time order)."""
        peak = values[rows[np.nanargmax(scores[rows])]]
        if profile is not None:
            before = values[context_rows(stamps, stamps[rows[0]], context_skip_minutes, explain.context_minutes)]
            evidence = profile.evidence(values[rows], before if len(before) >= explain.context_min_rows else None, explain)
            return ranked_metrics(np.fmax.reduce(evidence, axis=0), metrics, peak, baselines, len(metrics))
        with warnings.catch_warnings(action="ignore", category=RuntimeWarning):  # a metric with no error all incident
            mean = np.nanmean(np.asfortranarray(errors[rows]), axis=0)  # each metric summed as a column is
            return ranked_metrics(mean, metrics, peak, baselines, len(metrics))

    flagged, times = pdf["flagged"].to_numpy(dtype=bool), pdf[TS]
    out = []
    for first, end, peak in zip(starts[keep], ends[keep], peaks[keep], strict=True):
        rows = np.flatnonzero((stamps >= stamps[at[first]]) & (stamps <= stamps[at[end - 1]]))
        step = phase_steps(stamps[rows], phase_minutes)
        parts = [rows[step == k] for k in np.unique(step)]
        ranked = ranking(rows)
        phases = [  # an incident within one phase is that phase: its ranking is the incident's
            {
                "start_ts": times.iloc[part[0]],
                "end_ts": times.iloc[part[-1]],
                "n_points": int(flagged[part].sum()),
                "ranked": ranked if len(parts) == 1 else ranking(part),
            }
            for part in parts
        ]
        out.append(
            {
                "entity_id": entities[first],
                "start_ts": times.iloc[at[first]],
                "end_ts": times.iloc[at[end - 1]],
                "n_points": int(end - first),
                "peak_score": float(peak_scores[peak]),
                "threshold": float(pdf["threshold"].iloc[rows[0]]),
                "scope": str(pdf["scope"].iloc[rows[0]]),
                "ranked": ranked,
                "phases": phases,
            }
        )
    return out


def phases_json(phases: list[dict], top: int = DEFAULTS.top_metrics) -> str:
    """An incident's phases as the alerts table holds them: a JSON list, in time order, of
    ``{"start_ts", "end_ts"`` (ISO 8601, UTC), ``"n_points"`` (flagged rows), ``"top_metrics"``,
    ``"contributions"}`` (every metric ranked, as the alert's own ``contributions``)."""

    def utc(ts) -> str:
        return utc_instant(ts).isoformat()

    return json.dumps(
        [
            {
                "start_ts": utc(p["start_ts"]),
                "end_ts": utc(p["end_ts"]),
                "n_points": p["n_points"],
                "top_metrics": ",".join(t["metric"] for t in p["ranked"][:top]),
                "contributions": p["ranked"],
            }
            for p in phases
        ]
    )
