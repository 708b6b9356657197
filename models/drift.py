"""Drift: how far a new partition's feature distributions moved from the training window's."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

PSI_EPSILON = 1e-4


class DriftReference(BaseEstimator):
    """Per-column quantile bins of the training data and the share of rows in each.

    Parameters
    ----------
    n_bins : int
        Quantile bins per column (10 = deciles). The outer bins are open-ended, so new values
        beyond the training range land in them.

    Attributes
    ----------
    columns_ : list of str
    edges_ : ndarray of shape (n_columns, n_bins - 1)
        Inner bin edges of each column.
    proportions_ : ndarray of shape (n_columns, n_bins)
        Share of the training rows in each bin.
    """

    def __init__(self, *, n_bins: int = 10):
        self.n_bins = n_bins

    def fit(self, frame: pd.DataFrame, columns: list[str]) -> DriftReference:
        """Learn the bins of ``columns`` from ``frame`` (NaN values ignored)."""
        if self.n_bins < 2:
            raise ValueError(f"n_bins must be >= 2, got {self.n_bins}")
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise ValueError(f"drift reference: columns {missing} are not in the frame")
        self.columns_ = list(columns)
        inner = np.linspace(0.0, 1.0, self.n_bins + 1)[1:-1]
        edges, proportions = [], []
        for col in self.columns_:
            values = _finite(frame[col])
            if values.size == 0:
                raise ValueError(f"drift reference: column {col!r} has no finite values")
            edges.append(np.quantile(values, inner))
            proportions.append(_shares(values, edges[-1], self.n_bins))
        self.edges_ = np.vstack(edges)
        self.proportions_ = np.vstack(proportions)
        return self

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Learned state as plain arrays (column names as a unicode array; no pickle)."""
        return {"columns": np.array(self.columns_, dtype=str), "edges": self.edges_, "proportions": self.proportions_}

    @classmethod
    def from_state_arrays(cls, params: dict, arrays: dict[str, np.ndarray]) -> DriftReference:
        ref = cls(**params)
        ref.columns_ = [str(c) for c in arrays["columns"]]
        ref.edges_ = np.asarray(arrays["edges"], dtype=float)
        ref.proportions_ = np.asarray(arrays["proportions"], dtype=float)
        return ref


def psi(reference: DriftReference, frame: pd.DataFrame) -> dict[str, float]:
    """Population stability index of each reference column in ``frame``.

    ``sum((q - p) * ln(q / p))`` over the reference bins, with shares floored at 1e-4 so an
    empty bin does not make it infinite. Below 0.1 is stable; above 0.25 is a marked shift.
    A column with no finite values in ``frame`` gets NaN.
    """
    out = {}
    for col, edges, expected in zip(reference.columns_, reference.edges_, reference.proportions_, strict=False):
        values = _finite(frame[col])
        if values.size == 0:
            out[col] = float("nan")
            continue
        p = np.maximum(expected, PSI_EPSILON)
        q = np.maximum(_shares(values, edges, expected.size), PSI_EPSILON)
        out[col] = float(np.sum((q - p) * np.log(q / p)))
    return out


def _finite(column: pd.Series) -> np.ndarray:
    values = column.to_numpy(dtype=float, na_value=np.nan)
    return values[np.isfinite(values)]


def _shares(values: np.ndarray, edges: np.ndarray, n_bins: int) -> np.ndarray:
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=n_bins)
    return counts / values.size
