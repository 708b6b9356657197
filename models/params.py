"""The tuned numbers of a training run and the layout of the matrix the detectors see.

Every number here was chosen by measurement; ``docs/tuning.md`` says where and how. A run's
:class:`ModelParams` are logged to MLflow and saved in its bundle, so a model is always scored and
explained with the values it was trained with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from feature_store.views import STATISTICS, statistic_of


class ExplainParams(BaseModel):
    """How alerts rank the metrics that moved (``models.explain``), and the normal range."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    normal_range_quantiles: tuple[float, float] = Field(
        (0.005, 0.995), description="A metric's normal range: these quantiles of its training values."
    )
    inside_range_weight: float = Field(
        1e-3, ge=0, description="Orders metrics that stayed inside their range, below any that left it."
    )
    change_weight: float = Field(0.1, ge=0, description="Weight of a metric's move against the hour before an incident.")
    change_cap: float = Field(10.0, gt=0, description="A move counts at most this many context deviations.")
    context_minutes: int = Field(60, ge=1, description="Length of the context an incident is compared with.")
    phase_minutes: int = Field(60, ge=1, description="Long incidents are also explained per phase of this length.")
    context_min_rows: int = Field(10, ge=2, description="Fewer context rows than this: no change evidence.")
    context_spread_floor: float = Field(
        0.1, gt=0, description="A context's deviation is floored at this share of the training spread."
    )
    context_exit_quantile: float = Field(
        0.9, ge=0, le=1, description="How far a metric was already outside its range in the context: this quantile."
    )
    flat_metric_weight: float = Field(
        1.0, ge=0,
        description="A metric whose normal range is one value (constant in training) counts its evidence at this weight.",
    )
    top_metrics: int = Field(3, ge=1, description="Metrics an alert names in top_metrics.")


class ModelParams(BaseModel):
    """Hyper-parameters of one training run (logged to MLflow, saved in the bundle)."""

    model_config = ConfigDict(extra="forbid")

    iforest_n_estimators: int = Field(100, ge=1)
    iforest_max_samples: int = Field(2048, ge=2, description="Rows each tree is grown on.")
    ae_hidden: int = Field(32, ge=1)
    ae_bottleneck: int = Field(8, ge=1)
    ae_epochs: int = Field(30, ge=1)
    ae_batch_size: int = Field(256, ge=1)
    ae_lr: float = Field(1e-3, gt=0)
    max_train_rows: int = Field(5000, ge=10, description="Training rows per entity (even subsample).")
    fleet_train_rows: int = Field(50_000, ge=10, description="Pooled rows the fleet model trains on.")
    holdout_fraction: float = Field(0.2, gt=0, lt=1, description="Newest share of rows for calibration.")
    gap_minutes: int = Field(5, ge=0, description="Gap tolerated inside one incident.")
    min_history_rows: int = Field(1000, ge=10, description="Rows an entity needs for its own models.")
    combine: Literal["mean", "max"] = "mean"
    subspaces: tuple[str, ...] = Field(
        ("mean", "std", "value+mean"),
        description="Feature statistics each extra ensemble member leaves out (one member per entry; "
        "several statistics joined by '+').",
    )
    range_weight: float = Field(2.0, ge=0, description="Weight of the normal-range detector in the mean (0: none).")
    range_tail_scale: float = Field(
        1.0, ge=0, description="Least growth of the normal-range calibrator's tail: one decade per ln(10) spreads."
    )
    error_floor: float = Field(1e-6, gt=0, description="Floor on a metric's training error spread (no division by 0).")
    smooth_points: int = Field(
        5, ge=1, description="Rows each raw detector score is averaged over (centred, within a scored partition)."
    )
    feedback_margin: float = Field(1.01, ge=1, description="A false alert's peak score times this is the raised threshold.")
    feedback_max_factor: float = Field(2.0, ge=1, description="A raised threshold is at most this many times the fitted one.")
    explain: ExplainParams = Field(default_factory=ExplainParams)

    @field_validator("subspaces")
    @classmethod
    def _known_statistics(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entry in value:
            unknown = [s for s in entry.split("+") if s not in STATISTICS]
            if unknown:
                raise ValueError(f"subspace {entry!r} names unknown statistics {unknown}; known: {', '.join(STATISTICS)}")
        return value

    def iforest_params(self) -> dict:
        return {"n_estimators": self.iforest_n_estimators, "max_samples": self.iforest_max_samples}

    def autoencoder_params(self) -> dict:
        return {
            "hidden": self.ae_hidden,
            "bottleneck": self.ae_bottleneck,
            "epochs": self.ae_epochs,
            "batch_size": self.ae_batch_size,
            "lr": self.ae_lr,
        }


@dataclass(frozen=True)
class FeatureLayout:
    """Which columns the detectors see: the feature columns (scaled), each computed from one metric,
    then each metric's own value (what the normal-range detector reads). The ensemble's input matrix
    is ``[scaled features | metric values]`` in this order."""

    feature_cols: tuple[str, ...]
    feature_metric: tuple[str, ...]
    metrics: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "feature_cols", tuple(self.feature_cols))
        object.__setattr__(self, "feature_metric", tuple(self.feature_metric))
        object.__setattr__(self, "metrics", tuple(self.metrics))
        if len(self.feature_cols) != len(self.feature_metric):
            raise ValueError(f"{len(self.feature_cols)} feature columns but {len(self.feature_metric)} feature metrics")
        if tuple(dict.fromkeys(self.feature_metric)) != self.metrics:
            raise ValueError(
                f"feature metrics {list(dict.fromkeys(self.feature_metric))} must be the metrics {list(self.metrics)}, in order"
            )

    @classmethod
    def of(cls, view) -> FeatureLayout:
        """The layout of a feature view (``feature_store.views.FeatureView``)."""
        cols = list(view.feature_columns)
        return cls(tuple(cols), tuple(view.metric_of(c) for c in cols), tuple(view.metrics))

    @property
    def n_features(self) -> int:
        return len(self.feature_cols)

    @property
    def feature_index(self) -> np.ndarray:
        """Columns of the scaled features in the input matrix."""
        return np.arange(self.n_features)

    @property
    def value_index(self) -> np.ndarray:
        """Columns of the metric values in the input matrix."""
        return np.arange(self.n_features, self.n_features + len(self.metrics))

    def member_columns(self, leave_out: tuple[str, ...]) -> dict[str, np.ndarray]:
        """Feature columns of each extra ensemble member, by what it leaves out (``"mean"``,
        ``"value+mean"``); a member that would keep every column or none is skipped."""
        stats = np.array([statistic_of(c) for c in self.feature_cols])
        members = {}
        for stat in dict.fromkeys(leave_out):
            keep = np.flatnonzero(~np.isin(stats, stat.split("+")))
            if 0 < keep.size < self.n_features:
                members[stat] = keep
        return members

    def check(self, frame: pd.DataFrame, entity_col: str, ts_col: str) -> None:
        """Raise when ``frame`` lacks a column the models need."""
        needed = dict.fromkeys([entity_col, ts_col, *self.feature_cols, *self.metrics])
        missing = [c for c in needed if c not in frame.columns]
        if missing:
            raise ValueError(f"training frame lacks columns {missing}")

    def features(self, frame: pd.DataFrame) -> np.ndarray:
        """The raw feature matrix (missing values NaN)."""
        return frame[list(self.feature_cols)].to_numpy(dtype=float, na_value=np.nan)

    def values(self, frame: pd.DataFrame) -> np.ndarray:
        """The metric values (missing values NaN)."""
        return frame[list(self.metrics)].to_numpy(dtype=float, na_value=np.nan)
