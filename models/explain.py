"""Explanations: which metrics drove an incident, from the autoencoder's per-feature errors."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd


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


def top_contributors(
    errors_rows: pd.DataFrame,
    values: pd.DataFrame | pd.Series | Mapping[str, float],
    baselines: Mapping[str, float],
    k: int = 3,
) -> list[dict]:
    """The ``k`` metrics that contributed most to one incident.

    Parameters
    ----------
    errors_rows : DataFrame
        Normalised per-metric errors of the incident's rows (columns = metrics).
    values : one-row DataFrame, Series or mapping
        Each metric's value at the incident's peak.
    baselines : mapping metric -> float
        The entity's training median of each metric.
    k : int
        How many metrics to return.

    Returns
    -------
    list of dict
        ``{"metric", "value", "baseline", "error"}`` (plain floats), highest mean error first.
    """
    if isinstance(values, pd.DataFrame):
        if len(values) != 1:
            raise ValueError(f"values must hold the peak row only, got {len(values)} rows")
        values = values.iloc[0]
    ranked = errors_rows.mean(axis=0).sort_values(ascending=False, kind="mergesort").head(k)
    return [
        {
            "metric": str(metric),
            "value": float(values[metric]),
            "baseline": float(baselines[metric]),
            "error": float(error),
        }
        for metric, error in ranked.items()
    ]
