"""Explanations: which metrics drove an incident.

Incidents rank their metrics by how far each metric's own value went outside its normal training
range (:func:`normal_ranges`, :func:`deviations`, in units of the metric's training spread), taking
each metric's largest move inside the incident; metrics that stayed inside their range keep the
order of their distance from the training median. Each metric's move against the hour before the
incident (:func:`changes`, capped) is added at a small weight, so a metric that changed sharply
but stayed inside its range is not left at the bottom; a metric already outside its range in that
hour (a level the entity drifted to) counts only how much farther it went. The autoencoder's
per-metric errors (:func:`metric_errors`) rank them when a model has no spreads. Every weight is
an :class:`models.params.ExplainParams` field; ``docs/tuning.md`` gives the measurements.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from models.params import ExplainParams

DEFAULTS = ExplainParams()


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
    return {m: float(v) for m, v in zip(metrics, scale, strict=False)}


def normal_ranges(
    rows: pd.DataFrame, metrics: list[str], quantiles: tuple[float, float] = DEFAULTS.normal_range_quantiles
) -> dict[str, list[float]]:
    """Each metric's normal training range ``[low, high]`` (the ``quantiles`` of its values),
    for :func:`deviations`."""
    if len(rows) == 0:
        return {}
    bounds = np.nanquantile(rows[metrics].to_numpy(dtype=float), list(quantiles), axis=0)
    return {m: [float(lo), float(hi)] for m, lo, hi in zip(metrics, bounds[0], bounds[1], strict=False)}


def range_exits(values: pd.DataFrame, spread: Mapping[str, float], ranges: Mapping[str, Sequence[float]]) -> pd.DataFrame:
    """How far each metric (columns of ``values``) is outside its normal range ``[low, high]`` on
    each row, in units of its spread; 0 inside it and for missing values."""
    metrics = list(values.columns)
    scale = np.array([spread[m] for m in metrics], dtype=float)
    low = np.array([ranges[m][0] for m in metrics], dtype=float)
    high = np.array([ranges[m][1] for m in metrics], dtype=float)
    return pd.DataFrame(exits_array(values.to_numpy(dtype=float), scale, low, high), columns=metrics, index=values.index)


def exits_array(X: np.ndarray, scale: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """:func:`range_exits` on a matrix whose columns are metrics."""
    outside = (np.maximum(X - high, 0.0) + np.maximum(low - X, 0.0)) / scale
    return np.nan_to_num(outside, nan=0.0)


def distances_array(X: np.ndarray, base: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``|value - baseline| / spread`` of a matrix whose columns are metrics; 0 where missing."""
    return np.nan_to_num(np.abs(X - base) / scale, nan=0.0)


def deviations(
    values: pd.DataFrame,
    baselines: Mapping[str, float],
    spread: Mapping[str, float],
    ranges: Mapping[str, Sequence[float]] | None = None,
    already: Mapping[str, float] | None = None,
    *,
    inside_weight: float = DEFAULTS.inside_range_weight,
) -> pd.DataFrame:
    """How far each metric (columns of ``values``) moved on each row, in units of its spread.

    Without ``ranges``: ``|value - baseline| / spread``. With them: the distance outside the
    metric's normal range ``[low, high]`` over its spread (:func:`range_exits`), less ``already``
    (how far outside each metric already was, floored at 0), plus ``inside_weight`` times
    ``|value - baseline| / spread``, so any metric that left its range outranks one that did not.
    """
    metrics = list(values.columns)
    X = values.to_numpy(dtype=float)
    base = np.array([baselines[m] for m in metrics], dtype=float)
    scale = np.array([spread[m] for m in metrics], dtype=float)
    out = distances_array(X, base, scale)
    if ranges:
        outside = range_exits(values, spread, ranges).to_numpy()
        if already is not None:
            outside = np.maximum(outside - np.array([already.get(m, 0.0) for m in metrics], dtype=float), 0.0)
        out = outside + inside_weight * out
    return pd.DataFrame(out, columns=metrics, index=values.index)


def changes(
    values: pd.DataFrame,
    context: pd.DataFrame,
    spread: Mapping[str, float],
    floor: float = DEFAULTS.context_spread_floor,
) -> pd.DataFrame:
    """How far each metric moved on each row from its level just before (``context``), as a
    z-score: ``|value - mean(context)| / max(std(context), floor * spread)``.

    The floor keeps a metric that was flat in the context (a constant counter) from turning a
    tiny step into a huge score. Missing values, and metrics missing from the whole context, give 0.
    """
    metrics = list(values.columns)
    scale = np.array([spread[m] for m in metrics], dtype=float)
    out = changes_array(values.to_numpy(dtype=float), context[metrics].to_numpy(dtype=float), scale, floor)
    return pd.DataFrame(out, columns=metrics, index=values.index)


def changes_array(X: np.ndarray, ctx: np.ndarray, scale: np.ndarray, floor: float) -> np.ndarray:
    """:func:`changes` on matrices whose columns are metrics."""
    if len(ctx) < 2:
        raise ValueError(f"changes needs at least 2 context rows, got {len(ctx)}")
    ctx = np.asfortranarray(ctx)  # each metric's rows contiguous, summed as a DataFrame's column is
    with warnings.catch_warnings(action="ignore", category=RuntimeWarning):  # a metric missing all hour
        level, sd = np.nanmean(ctx, axis=0), np.nanstd(ctx, axis=0)
    sd = np.maximum(np.maximum(np.nan_to_num(sd, nan=0.0), floor * scale), 1e-12)
    return np.nan_to_num(np.abs(X - level) / sd, nan=0.0)


def incident_evidence(
    rows: pd.DataFrame,
    context: pd.DataFrame,
    baselines: Mapping[str, float],
    spread: Mapping[str, float],
    ranges: Mapping[str, Sequence[float]] | None = None,
    params: ExplainParams = DEFAULTS,
) -> pd.DataFrame:
    """Per-row evidence that each metric drove an incident, what alerts rank metrics by.

    :func:`deviations` plus ``params.change_weight`` times :func:`changes` against ``context``
    (the entity's rows in the ``params.context_minutes`` before the incident), each move capped at
    ``params.change_cap``: it reorders the metrics that stayed near their ranges, and cannot outweigh a
    clear exit from one, however quiet the context was. A metric that was already outside its
    range in the context (a drift, a level that stayed high) counts only how much farther it went
    than its ``params.context_exit_quantile`` exit there. With fewer than ``params.context_min_rows``
    context rows, the deviations alone. A metric whose normal range is a single value (a counter
    that never moved in training) counts at ``params.flat_metric_weight``: its spread is the
    floor, so one quantised step of it scores many spreads.
    """
    metrics = list(rows.columns)
    profile = MetricProfile.of(metrics, baselines, spread, ranges)
    ctx = context[metrics].to_numpy(dtype=float) if len(context) >= params.context_min_rows else None
    return pd.DataFrame(profile.evidence(rows.to_numpy(dtype=float), ctx, params), columns=metrics, index=rows.index)


@dataclass(frozen=True)
class MetricProfile:
    """An entity's per-metric baselines, spreads and normal ranges as arrays in one metric order:
    what :func:`incident_evidence` computes with, for a caller that explains many incidents."""

    metrics: list[str]
    base: np.ndarray
    scale: np.ndarray
    low: np.ndarray | None = None  # None: no normal ranges (a model saved before they were kept)
    high: np.ndarray | None = None

    @classmethod
    def of(cls, metrics: list[str], baselines: Mapping[str, float], spread: Mapping[str, float],
           ranges: Mapping[str, Sequence[float]] | None = None) -> MetricProfile:
        base = np.array([baselines[m] for m in metrics], dtype=float)
        scale = np.array([spread[m] for m in metrics], dtype=float)
        if not ranges:
            return cls(list(metrics), base, scale)
        low = np.array([ranges[m][0] for m in metrics], dtype=float)
        high = np.array([ranges[m][1] for m in metrics], dtype=float)
        return cls(list(metrics), base, scale, low, high)

    def evidence(self, X: np.ndarray, ctx: np.ndarray | None, params: ExplainParams = DEFAULTS) -> np.ndarray:
        """:func:`incident_evidence` of rows ``X`` against context rows ``ctx`` (None, or fewer than
        ``params.context_min_rows``: the deviations alone); columns in :attr:`metrics` order."""
        w = params.inside_range_weight
        near = distances_array(X, self.base, self.scale)
        exits = None if self.low is None else exits_array(X, self.scale, self.low, self.high)
        if ctx is None or len(ctx) < params.context_min_rows:
            out = near if exits is None else exits + w * near
        else:
            if exits is not None:  # how far each metric already was outside its range in the context
                already = np.percentile(exits_array(ctx, self.scale, self.low, self.high),
                                        params.context_exit_quantile * 100.0, axis=0)
                near = np.maximum(exits - already, 0.0) + w * near
            moves = np.minimum(changes_array(X, ctx, self.scale, params.context_spread_floor), params.change_cap)
            out = near + params.change_weight * moves
        if self.low is not None and params.flat_metric_weight != 1.0:
            flat = self.high <= self.low
            if flat.any():
                out = out.copy()
                out[:, flat] = out[:, flat] * params.flat_metric_weight
        return out


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
    return ranked_metrics(summary.to_numpy(dtype=float), [str(m) for m in summary.index],
                          [values[m] for m in summary.index], baselines, k)


def ranked_metrics(summary: np.ndarray, metrics: list[str], values, baselines: Mapping[str, float], k: int) -> list[dict]:
    """:func:`top_contributors` from each metric's summarised evidence (``summary``) and its value at
    the peak (``values``, both in ``metrics`` order): highest first, ties in metric order, NaN last."""
    order = np.argsort(-summary, kind="stable")[:k]
    return [
        {"metric": metrics[i], "value": float(values[i]), "baseline": float(baselines[metrics[i]]), "error": float(summary[i])}
        for i in order
    ]
