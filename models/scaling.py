"""Per-metric robust scaling fitted on training data, clipped so scoring data cannot explode."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data


class RobustClipScaler(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """Centre on the median, divide by the IQR, clip to ``[-clip, clip]``.

    A metric that was (nearly) constant in training has an IQR of 0; its scale falls back to
    the standard deviation and then to ``min_scale``, and clipping bounds what a later change
    of that metric can contribute to any score.

    Parameters
    ----------
    clip : float, default=10.0
        Bound on the absolute value of a scaled value.
    min_scale : float, default=1e-3
        Floor on each column's scale.
    """

    def __init__(self, *, clip: float = 10.0, min_scale: float = 1e-3):
        self.clip = clip
        self.min_scale = min_scale

    def fit(self, X, y=None):
        """Learn ``center_`` (median) and ``scale_`` (IQR, else std, floored) of each column."""
        if not self.clip > 0 or not self.min_scale > 0:
            raise ValueError(f"clip and min_scale must be > 0, got clip={self.clip}, min_scale={self.min_scale}")
        X = validate_data(self, X, dtype=np.float64, ensure_all_finite=True)
        q25, self.center_, q75 = np.percentile(X, [25, 50, 75], axis=0)
        iqr = q75 - q25
        scale = np.where(iqr > 0, iqr, X.std(axis=0))
        self.scale_ = np.maximum(scale, self.min_scale)
        return self

    def transform(self, X) -> np.ndarray:
        """Scaled and clipped copy of ``X``."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64, ensure_all_finite=True)
        return np.clip((X - self.center_) / self.scale_, -self.clip, self.clip)

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Learned state as arrays (for an ``.npz``)."""
        check_is_fitted(self)
        return {"center": self.center_, "scale": self.scale_}

    @classmethod
    def from_state_arrays(cls, params: dict, arrays: dict) -> RobustClipScaler:
        """The scaler with ``params`` (``get_params()``) and ``arrays`` (:meth:`state_arrays`)."""
        scaler = cls(**params)
        scaler.center_ = np.asarray(arrays["center"], dtype=np.float64)
        scaler.scale_ = np.asarray(arrays["scale"], dtype=np.float64)
        scaler.n_features_in_ = scaler.center_.shape[0]
        return scaler
