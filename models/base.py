"""The contract every detector follows, so calibration, thresholds and explanations are written once.

PyOD's convention: ``fit(X)`` returns the detector, ``score_samples(X)`` gives one score per row
with HIGHER meaning MORE anomalous, and ``feature_errors(X)`` gives each feature's share of the
score where the detector has one (``None`` otherwise). Every detector serialises itself without
pickle through ``to_bytes`` / ``from_bytes``; those whose state is plain arrays also offer
``state_arrays`` / ``from_state_arrays`` so a bundle can keep them in one ``.npz``.
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted, validate_data


class BaseDetector(BaseEstimator, metaclass=ABCMeta):
    """Unsupervised detector fitted on normal history; higher score = more anomalous."""

    @abstractmethod
    def fit(self, X, y=None):
        """Learn what normal looks like from ``X`` (n_samples, n_features); returns ``self``."""

    @abstractmethod
    def score_samples(self, X) -> np.ndarray:
        """Anomaly score of each row of ``X``, shape (n_samples,); higher = more anomalous."""

    def feature_errors(self, X) -> np.ndarray | None:
        """Per-feature contribution to each row's score, shape (n_samples, n_features), or None."""
        return None

    @abstractmethod
    def to_bytes(self) -> bytes:
        """The fitted detector as bytes that load without unpickling arbitrary code."""

    @classmethod
    @abstractmethod
    def from_bytes(cls, data: bytes) -> BaseDetector:
        """The detector saved by :meth:`to_bytes`."""

    def _validate(self, X, *, reset: bool) -> np.ndarray:
        """``X`` as a finite float64 array; on scoring, with the feature count seen in fit."""
        if not reset:
            check_is_fitted(self)
        return validate_data(self, X, reset=reset, dtype=np.float64, ensure_all_finite=True)
