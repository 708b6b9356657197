"""The two reference detectors an evaluation compares the platform with: PCA reconstruction
error and a plain IsolationForest on the raw metrics, each fitted on a machine's training part."""

from __future__ import annotations

import numpy as np
from sklearn.decomposition import PCA
from sklearn.ensemble import IsolationForest

PCA_COMPONENTS = 10


def reference_scores(train: np.ndarray, test: np.ndarray, *, seed: int) -> dict[str, np.ndarray]:
    """Scores of the two reference detectors, fitted on ``train`` and applied to ``test``.

    ``pca``: squared reconstruction error of each metric with ``PCA_COMPONENTS`` components,
    each metric's error robustly normalised by its training errors (median, IQR), max over
    metrics. ``iforest``: a plain IsolationForest on the raw metrics (negated score_samples).
    """
    pca = PCA(n_components=min(PCA_COMPONENTS, train.shape[1], train.shape[0]), random_state=seed).fit(train)

    def errors(X):
        return (X - pca.inverse_transform(pca.transform(X))) ** 2

    train_err = errors(train)
    median = np.median(train_err, axis=0)
    iqr = np.subtract(*np.percentile(train_err, [75, 25], axis=0))
    scale = np.maximum(iqr, 1e-6)
    pca_score = ((errors(test) - median) / scale).max(axis=1)
    forest = IsolationForest(random_state=seed).fit(train)
    return {"pca": pca_score, "iforest": -forest.score_samples(test)}
