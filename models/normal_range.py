"""The normal-range detector: how far each metric is outside its normal training range.

It scores a row by the sum over metrics of each metric's distance outside its normal range, in
units of its training spread, plus a small weight of its distance from the training median: the
same evidence the explanations rank metrics by (``models.explain.deviations``), as a detector. A
large exit of one or a few metrics scores high even where the multivariate detectors dilute it
among many columns. Its learned medians, spreads and ranges are also the entity's baselines for
explanations.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from models.base import BaseDetector
from models.explain import distances_array, exits_array, normal_ranges
from models.explain import spreads as metric_spreads


class NormalRangeDetector(BaseDetector):
    """Per-metric median, spread and normal range; higher score = farther outside.

    Parameters
    ----------
    quantiles : (float, float), default=(0.005, 0.995)
        The normal range of a metric: these quantiles of its values.
    inside_weight : float, default=1e-3
        Weight of the distance from the median, which orders rows that stayed inside every range.
    """

    def __init__(self, *, quantiles: tuple[float, float] = (0.005, 0.995), inside_weight: float = 1e-3):
        self.quantiles = quantiles
        self.inside_weight = inside_weight

    def fit(self, X, y=None, *, range_X=None, metrics=None):
        """Learn medians and spreads from ``X`` (rows x metrics, missing values NaN) and the
        normal ranges from ``range_X`` (default ``X``: the rows a range should cover may be more
        than those the medians describe, such as the calibration tail). ``metrics`` names the
        columns (default ``m0``, ``m1``...)."""
        train = _frame(X, metrics)
        names = list(train.columns)
        every = train if range_X is None else _frame(range_X, names)
        self.metrics_ = names
        self.n_features_in_ = len(names)
        self.center_ = np.array([float(train[m].median()) if len(train) else float("nan") for m in names])
        spread = metric_spreads(train, names)
        ranges = normal_ranges(every, names, self.quantiles)
        self.spread_ = np.array([spread[m] for m in names]) if spread else np.full(len(names), np.nan)
        self.low_ = np.array([ranges[m][0] for m in names]) if ranges else np.full(len(names), np.nan)
        self.high_ = np.array([ranges[m][1] for m in names]) if ranges else np.full(len(names), np.nan)
        return self

    def score_samples(self, X) -> np.ndarray:
        """Sum over metrics of the distance outside the normal range (in spreads), plus
        ``inside_weight`` times the distance from the median; missing values count 0."""
        X = np.asfortranarray(np.asarray(X, dtype=float))  # column-major, as pandas hands metric columns over
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has shape {X.shape}, expected (n, {self.n_features_in_})")
        out = exits_array(X, self.spread_, self.low_, self.high_) + self.inside_weight * distances_array(
            X, self.center_, self.spread_
        )
        return out.sum(axis=1)

    def feature_errors(self, X) -> np.ndarray:
        """Each metric's distance outside its range, in spreads."""
        return exits_array(np.asarray(X, dtype=float), self.spread_, self.low_, self.high_)

    # The learned state is small and kept as plain values in the model archive's manifest.
    @property
    def baselines(self) -> dict[str, float]:
        return dict(zip(self.metrics_, map(float, self.center_), strict=False))

    @property
    def spreads(self) -> dict[str, float]:
        return {} if np.isnan(self.spread_).all() else dict(zip(self.metrics_, map(float, self.spread_), strict=False))

    @property
    def ranges(self) -> dict[str, list[float]]:
        if np.isnan(self.low_).all():
            return {}
        return {m: [float(lo), float(hi)] for m, lo, hi in zip(self.metrics_, self.low_, self.high_, strict=False)}

    def to_state(self) -> dict:
        """Parameters and learned values as JSON-ready plain values."""
        return {
            "params": self.get_params(),
            "baselines": self.baselines,
            "spreads": self.spreads,
            "normal_ranges": self.ranges,
            "metrics": list(self.metrics_),
        }

    @classmethod
    def from_state(cls, state: dict) -> NormalRangeDetector:
        params = dict(state.get("params", {}))
        if "quantiles" in params:
            params["quantiles"] = tuple(params["quantiles"])
        det = cls(**params)
        names = list(state["metrics"])
        det.metrics_, det.n_features_in_ = names, len(names)
        nan = float("nan")
        det.center_ = np.array([state["baselines"].get(m, nan) for m in names], dtype=float)
        det.spread_ = np.array([state["spreads"].get(m, nan) for m in names], dtype=float)
        det.low_ = np.array([state["normal_ranges"].get(m, [nan, nan])[0] for m in names], dtype=float)
        det.high_ = np.array([state["normal_ranges"].get(m, [nan, nan])[1] for m in names], dtype=float)
        return det

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_state(), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> NormalRangeDetector:
        return cls.from_state(json.loads(data))


def _frame(X, metrics) -> pd.DataFrame:
    if isinstance(X, pd.DataFrame):
        return X if metrics is None else X[list(metrics)]
    X = np.asarray(X, dtype=float)
    return pd.DataFrame(X, columns=list(metrics) if metrics is not None else [f"m{i}" for i in range(X.shape[1])])
