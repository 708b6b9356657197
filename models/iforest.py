"""IsolationForest behind the detector contract, saved with skops (no pickle)."""

from __future__ import annotations

import numbers

import numpy as np
import skops.io as sio
from sklearn.ensemble import IsolationForest

from models.base import BaseDetector

# The only type in a saved IsolationForest that skops does not trust by default
# (found with skops.io.get_untrusted_types on a fitted model). We load files we wrote.
TRUSTED_TYPES = ["sklearn.tree._tree.Tree"]


class IForestDetector(BaseDetector):
    """Isolation forest; score = minus sklearn's ``score_samples`` (higher = more anomalous).

    Parameters
    ----------
    n_estimators : int, default=100
        Number of trees.
    max_samples : int, float or "auto", default=256
        Rows drawn per tree; an int larger than the training set means the whole set.
    random_state : int, RandomState instance or None, default=None
        Seeds the subsampling and the splits.
    """

    def __init__(self, *, n_estimators: int = 100, max_samples=256, random_state=None):
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.random_state = random_state

    def fit(self, X, y=None):
        """Fit the forest on ``X`` (n_samples, n_features)."""
        X = self._validate(X, reset=True)
        max_samples = self.max_samples
        if isinstance(max_samples, numbers.Integral):
            max_samples = min(max_samples, X.shape[0])
        self.forest_ = IsolationForest(
            n_estimators=self.n_estimators, max_samples=max_samples, random_state=self.random_state
        ).fit(X)
        return self

    def score_samples(self, X) -> np.ndarray:
        """Anomaly score per row; higher = more anomalous."""
        X = self._validate(X, reset=False)
        return -self.forest_.score_samples(X)

    def to_bytes(self) -> bytes:
        """Parameters and fitted forest in skops format."""
        return sio.dumps({"params": self.get_params(), "forest": self.forest_, "n_features_in": self.n_features_in_})

    @classmethod
    def from_bytes(cls, data: bytes) -> IForestDetector:
        """Load what :meth:`to_bytes` wrote, trusting only :data:`TRUSTED_TYPES`."""
        state = sio.loads(data, trusted=TRUSTED_TYPES)
        detector = cls(**state["params"])
        detector.forest_ = state["forest"]
        detector.n_features_in_ = state["n_features_in"]
        return detector
