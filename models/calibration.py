"""Calibration: raw detector scores onto one scale, -log10 of the held-out tail probability.

An IsolationForest score and an autoencoder's reconstruction error mean nothing side by side;
their rarity on held-out data does. A calibrated score of 3 means "one held-out point in a
thousand scored this high", whatever the detector, so scores can be averaged and thresholded.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

TAIL_FRACTION = 0.05


class TailCalibrator(TransformerMixin, BaseEstimator):
    """Maps scores to -log10 of their empirical tail probability on reference scores.

    Inside the reference range the tail probability is ``(#reference >= s + 1) / (n + 1)``.
    Beyond the largest reference point an exponential tail, fitted to the top 5% of the
    reference scores, takes over, so extreme scores keep rising instead of saturating.

    Parameters
    ----------
    n_quantiles : int
        Reference points kept (quantiles of the fitted scores when there are more).
    min_tail_scale : float
        Floor on the exponential tail's scale, in raw-score units. A score that is nearly always
        0 on reference data (the normal-range detector's) has a tiny top 5%, and without a floor
        any small excess beyond it would be called astronomically rare.

    Attributes
    ----------
    quantiles_ : ndarray of shape (n_ref,)
        Sorted reference points.
    tail_scale_ : float
        Mean excess of the top 5% over their lower bound: the exponential tail's scale.
    """

    def __init__(self, *, n_quantiles: int = 1000, min_tail_scale: float = 0.0):
        self.n_quantiles = n_quantiles
        self.min_tail_scale = min_tail_scale

    def fit(self, scores: np.ndarray) -> TailCalibrator:
        """Learn the reference distribution from held-out scores (higher = more anomalous)."""
        scores = np.asarray(scores, dtype=float)
        if scores.ndim != 1 or scores.size < 2 or not np.isfinite(scores).all():
            raise ValueError("TailCalibrator.fit needs a 1-D array of at least 2 finite scores")
        if self.n_quantiles < 2:
            raise ValueError(f"n_quantiles must be >= 2, got {self.n_quantiles}")
        if not self.min_tail_scale >= 0:
            raise ValueError(f"min_tail_scale must be >= 0, got {self.min_tail_scale}")
        ordered = np.sort(scores)
        if ordered.size > self.n_quantiles:
            self.quantiles_ = np.quantile(ordered, np.linspace(0.0, 1.0, self.n_quantiles))
        else:
            self.quantiles_ = ordered
        top = ordered[min(int(np.floor(ordered.size * (1 - TAIL_FRACTION))), ordered.size - 2) :]
        spread = ordered[-1] - ordered[0]
        floor = max(spread / ordered.size, 1e-12 * max(1.0, abs(ordered[-1])))
        self.tail_scale_ = float(max(np.mean(top - top[0]), floor, self.min_tail_scale))
        return self

    def transform(self, scores: np.ndarray) -> np.ndarray:
        """Calibrated scores, >= 0 and non-decreasing in the raw score (NaN stays NaN)."""
        scores = np.asarray(scores, dtype=float)
        ref = self.quantiles_
        n = ref.size
        at_or_above = n - np.searchsorted(ref, scores, side="left")
        calibrated = np.log10((n + 1.0) / (at_or_above + 1.0))
        beyond = scores > ref[-1]
        excess = (scores[beyond] - ref[-1]) / self.tail_scale_
        calibrated[beyond] = np.log10(n + 1.0) + excess / np.log(10.0)
        calibrated[np.isnan(scores)] = np.nan
        return calibrated

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Learned state as plain arrays (saved with ``np.savez``, no pickle)."""
        return {"quantiles": self.quantiles_, "tail_scale": np.array([self.tail_scale_])}

    @classmethod
    def from_state_arrays(cls, params: dict, arrays: dict[str, np.ndarray]) -> TailCalibrator:
        cal = cls(**params)
        cal.quantiles_ = np.asarray(arrays["quantiles"], dtype=float)
        cal.tail_scale_ = float(arrays["tail_scale"][0])
        return cal


def combine(calibrated: list[np.ndarray], how: str = "mean", weights: list[float] | None = None) -> np.ndarray:
    """One score per point from several calibrated scores: their (weighted) mean, or their max.

    ``weights`` (one per array, default all 1) count some detectors more than others in the mean;
    ``max`` ignores them.
    """
    if how not in ("mean", "max"):
        raise ValueError(f"how must be 'mean' or 'max', got {how!r}")
    if not calibrated:
        raise ValueError("combine needs at least one array of calibrated scores")
    stacked = np.vstack([np.asarray(c, dtype=float) for c in calibrated])
    if how == "max":
        return stacked.max(axis=0)
    if weights is None:
        return stacked.mean(axis=0)
    w = np.asarray(weights, dtype=float)
    if w.shape != (len(calibrated),) or (w < 0).any() or not w.sum() > 0:
        raise ValueError(f"weights must be {len(calibrated)} non-negative numbers, not all 0, got {weights}")
    return (w[:, None] * stacked).sum(axis=0) / w.sum()
