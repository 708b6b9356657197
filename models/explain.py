"""Explanations: which metrics drove an incident.

Incidents rank their metrics by how far each metric's own value went outside its normal training
range (:func:`normal_ranges`, :func:`deviations`, in units of the metric's training spread), taking
each metric's largest move inside the incident; metrics that stayed inside their range keep the
order of their distance from the training median. The autoencoder's per-metric errors
(:func:`metric_errors`) rank them when a model has no spreads (bundles trained before spreads were
kept). Measured on SMD's interpretation labels (7 machines): distance from the median put more of
the labelled metrics in the top ranks than the reconstruction errors on 5 of 7 machines, and
distance outside the normal range more than distance from the median on 5 of 7 (figures in the
README): a metric that swings widely every day is not a cause when it swings again. Each
metric's move against the hour before the incident (:func:`changes`, capped) is added at a tenth
of the weight, so a metric that changed sharply but stayed inside its range is not left at the
bottom: HitRate@150% on the labelled events' own rows 0.873 -> 0.906 (better on all 7 machines);
through the platform's alerts 0.756 -> 0.782 and 0.753 -> 0.772 with run seeds 42 and 7 (better
on 5 of 7 machines with either). Alerts also rank their metrics for each ``PHASE_MINUTES`` of the
incident, each against the hour before it (``models.scoring.entity_incidents``): 0.782 -> 0.807 and
0.772 -> 0.799 when an event is ranked by the hours it overlaps. A metric already outside its range
in that hour (a level the entity drifted to) counts only how much farther it went
(``CONTEXT_EXIT_QUANTILE``): 0.807 -> 0.810 and 0.799 -> 0.807; on the events' own rows 0.906 -> 0.921.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

NORMAL_RANGE_QUANTILES = (0.005, 0.995)  # a metric's normal range: the middle 99% of its training values
INSIDE_RANGE_WEIGHT = 1e-3  # orders metrics that stayed inside their range, below any that left it
CHANGE_WEIGHT = 0.1  # weight of a metric's move against the hour before the incident (:func:`changes`)
CHANGE_CAP = 10.0  # a move counts at most this many context deviations: at most one spread outside the range
CONTEXT_MINUTES = 60  # how long an incident's context is
PHASE_MINUTES = 60  # an incident's explanation is also given hour by hour (its phases), each against the hour before
CONTEXT_MIN_ROWS = 10  # fewer context rows than this (the day's first minutes): no change evidence
CONTEXT_SPREAD_FLOOR = 0.1  # a context's standard deviation is floored at this share of the training spread
CONTEXT_EXIT_QUANTILE = 0.9  # how far a metric was already outside its range in the context: this quantile of its exits


def metric_errors(
    feature_errors: np.ndarray,
    feature_metric: list[str],
    norm: Mapping[str, float] | None = None,
    center: Mapping[str, float] | None = None,
) -> pd.DataFrame:
    """Per-metric reconstruction error: the sum over each metric's features.

    Parameters
    ----------
    feature_errors : ndarray of shape (n, d)
        Per-feature errors of ``n`` rows.
    feature_metric : list of str, length d
        The metric each feature is computed from.
    norm : mapping metric -> float, optional
        The entity's median training error per metric; each metric's sum is divided by it so a
        metric with many features does not dominate. Without it the raw sums are returned
        (what the norm itself is computed from).
    center : mapping metric -> float, optional
        Subtracted from each metric's sum before dividing by ``norm``: with the median and the
        IQR of the training errors as ``center`` and ``norm`` the errors are robust z-scores, on
        one scale across metrics whether a metric is easy to reconstruct or not.

    Returns
    -------
    DataFrame of shape (n, n_metrics), one column per metric in first-seen order.
    """
    errors = np.asarray(feature_errors, dtype=float)
    if errors.ndim != 2 or errors.shape[1] != len(feature_metric):
        raise ValueError(f"feature_errors has shape {errors.shape}, expected (n, {len(feature_metric)})")
    metrics = list(dict.fromkeys(feature_metric))
    owner = np.array(feature_metric)
    sums = {m: errors[:, owner == m].sum(axis=1) for m in metrics}
    if center is not None:
        sums = {m: s - center[m] for m, s in sums.items()}
    if norm is not None:
        sums = {m: s / norm[m] for m, s in sums.items()}
    return pd.DataFrame(sums)


def spreads(rows: pd.DataFrame, metrics: list[str], *, min_scale: float = 1e-3) -> dict[str, float]:
    """Each metric's robust training spread, for :func:`deviations`.

    The IQR, else the standard deviation (a metric constant most of the time), floored at
    ``min_scale`` and at the median spread over the metrics, so a metric that barely moved in
    training cannot outrank every other one with a tiny absolute change.
    """
    if len(rows) == 0:
        return {}
    X = rows[metrics].to_numpy(dtype=float)
    q25, q75 = np.nanpercentile(X, [25, 75], axis=0)
    iqr = q75 - q25
    scale = np.where(iqr > 0, iqr, np.nanstd(X, axis=0))
    scale = np.maximum(np.nan_to_num(scale, nan=min_scale), min_scale)
    scale = np.maximum(scale, float(np.median(scale)))
    return {m: float(v) for m, v in zip(metrics, scale)}


def normal_ranges(
    rows: pd.DataFrame, metrics: list[str], quantiles: tuple[float, float] = NORMAL_RANGE_QUANTILES
) -> dict[str, list[float]]:
    """Each metric's normal training range ``[low, high]`` (the ``quantiles`` of its values),
    for :func:`deviations`."""
    if len(rows) == 0:
        return {}
    bounds = np.nanquantile(rows[metrics].to_numpy(dtype=float), list(quantiles), axis=0)
    return {m: [float(lo), float(hi)] for m, lo, hi in zip(metrics, bounds[0], bounds[1])}


def range_exits(values: pd.DataFrame, spread: Mapping[str, float], ranges: Mapping[str, Sequence[float]]) -> pd.DataFrame:
    """How far each metric (columns of ``values``) is outside its normal range ``[low, high]`` on
    each row, in units of its spread; 0 inside it and for missing values."""
    metrics = list(values.columns)
    X = values.to_numpy(dtype=float)
    scale = np.array([spread[m] for m in metrics], dtype=float)
    low = np.array([ranges[m][0] for m in metrics], dtype=float)
    high = np.array([ranges[m][1] for m in metrics], dtype=float)
    outside = (np.maximum(X - high, 0.0) + np.maximum(low - X, 0.0)) / scale
    return pd.DataFrame(np.nan_to_num(outside, nan=0.0), columns=metrics, index=values.index)


def deviations(
    values: pd.DataFrame,
    baselines: Mapping[str, float],
    spread: Mapping[str, float],
    ranges: Mapping[str, Sequence[float]] | None = None,
    already: Mapping[str, float] | None = None,
) -> pd.DataFrame:
    """How far each metric (columns of ``values``) moved on each row, in units of its spread.

    Without ``ranges``: ``|value - baseline| / spread``. With them: the distance outside the
    metric's normal range ``[low, high]`` over its spread (:func:`range_exits`), less ``already``
    (how far outside each metric already was, floored at 0), plus ``INSIDE_RANGE_WEIGHT`` times
    ``|value - baseline| / spread``, so any metric that left its range outranks one that did not.
    """
    metrics = list(values.columns)
    X = values.to_numpy(dtype=float)
    base = np.array([baselines[m] for m in metrics], dtype=float)
    scale = np.array([spread[m] for m in metrics], dtype=float)
    out = np.nan_to_num(np.abs(X - base) / scale, nan=0.0)
    if ranges:
        outside = range_exits(values, spread, ranges).to_numpy()
        if already is not None:
            outside = np.maximum(outside - np.array([already.get(m, 0.0) for m in metrics], dtype=float), 0.0)
        out = outside + INSIDE_RANGE_WEIGHT * out
    return pd.DataFrame(out, columns=metrics, index=values.index)


def changes(
    values: pd.DataFrame,
    context: pd.DataFrame,
    spread: Mapping[str, float],
    floor: float = CONTEXT_SPREAD_FLOOR,
) -> pd.DataFrame:
    """How far each metric moved on each row from its level just before (``context``), as a
    z-score: ``|value - mean(context)| / max(std(context), floor * spread)``.

    The floor keeps a metric that was flat in the context (a constant counter) from turning a
    tiny step into a huge score. Missing values, and metrics missing from the whole context, give 0.
    """
    metrics = list(values.columns)
    if len(context) < 2:
        raise ValueError(f"changes needs at least 2 context rows, got {len(context)}")
    ctx = context[metrics].to_numpy(dtype=float)
    scale = np.array([spread[m] for m in metrics], dtype=float)
    with warnings.catch_warnings(action="ignore", category=RuntimeWarning):  # a metric missing all hour
        level, sd = np.nanmean(ctx, axis=0), np.nanstd(ctx, axis=0)
    sd = np.maximum(np.maximum(np.nan_to_num(sd, nan=0.0), floor * scale), 1e-12)
    out = np.abs(values.to_numpy(dtype=float) - level) / sd
    return pd.DataFrame(np.nan_to_num(out, nan=0.0), columns=metrics, index=values.index)


def incident_evidence(
    rows: pd.DataFrame,
    context: pd.DataFrame,
    baselines: Mapping[str, float],
    spread: Mapping[str, float],
    ranges: Mapping[str, Sequence[float]] | None = None,
) -> pd.DataFrame:
    """Per-row evidence that each metric drove an incident, what alerts rank metrics by.

    :func:`deviations` plus ``CHANGE_WEIGHT`` times :func:`changes` against ``context`` (the
    entity's rows in the ``CONTEXT_MINUTES`` before the incident), each move capped at
    ``CHANGE_CAP``: it reorders the metrics that stayed near their ranges, and cannot outweigh a
    clear exit from one, however quiet the context was. A metric that was already outside its
    range in the context (a drift, a level that stayed high) counts only how much farther it went
    than its ``CONTEXT_EXIT_QUANTILE`` exit there. With fewer than ``CONTEXT_MIN_ROWS`` context
    rows, the deviations alone.
    """
    if len(context) < CONTEXT_MIN_ROWS:
        return deviations(rows, baselines, spread, ranges)
    already = None
    if ranges:
        already = range_exits(context[list(rows.columns)], spread, ranges).quantile(CONTEXT_EXIT_QUANTILE).to_dict()
    evidence = deviations(rows, baselines, spread, ranges, already=already)
    return evidence + CHANGE_WEIGHT * changes(rows, context, spread).clip(upper=CHANGE_CAP)


def range_scores(
    values: pd.DataFrame,
    baselines: Mapping[str, float],
    spread: Mapping[str, float],
    ranges: Mapping[str, Sequence[float]],
) -> np.ndarray:
    """The normal-range detector's raw score of each row: the sum over metrics of
    :func:`deviations` (how far each metric is outside its normal training range, in spreads).

    The same evidence the explanations rank metrics by, as a detector: a large exit of one or a
    few metrics scores high even where the multivariate models dilute it among many columns.
    """
    return deviations(values, baselines, spread, ranges).to_numpy().sum(axis=1)


def top_contributors(
    errors_rows: pd.DataFrame,
    values: pd.DataFrame | pd.Series | Mapping[str, float],
    baselines: Mapping[str, float],
    k: int = 3,
    how: str = "mean",
) -> list[dict]:
    """The ``k`` metrics that contributed most to one incident.

    Parameters
    ----------
    errors_rows : DataFrame
        Per-metric evidence on the incident's rows (columns = metrics): normalised
        reconstruction errors or :func:`deviations`.
    values : one-row DataFrame, Series or mapping
        Each metric's value at the incident's peak.
    baselines : mapping metric -> float
        The entity's training median of each metric.
    k : int
        How many metrics to return.
    how : {"mean", "max"}
        How a metric's evidence is summarised over the incident's rows.

    Returns
    -------
    list of dict
        ``{"metric", "value", "baseline", "error"}`` (plain floats; ``error`` the summarised
        evidence), highest first.
    """
    if how not in ("mean", "max"):
        raise ValueError(f"how must be 'mean' or 'max', got {how!r}")
    if isinstance(values, pd.DataFrame):
        if len(values) != 1:
            raise ValueError(f"values must hold the peak row only, got {len(values)} rows")
        values = values.iloc[0]
    summary = errors_rows.mean(axis=0) if how == "mean" else errors_rows.max(axis=0)
    ranked = summary.sort_values(ascending=False, kind="mergesort").head(k)
    return [
        {
            "metric": str(metric),
            "value": float(values[metric]),
            "baseline": float(baselines[metric]),
            "error": float(error),
        }
        for metric, error in ranked.items()
    ]
