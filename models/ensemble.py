"""The ensemble: named detectors, each on its own columns, calibrated and combined into one score.

An entity's score is the weighted mean (or the max) of its members' calibrated scores. A member is
a detector (IsolationForest, autoencoder, normal range), the columns of the input matrix it reads
(``models.params.FeatureLayout``: scaled features, then metric values), a tail calibrator fitted
on held-out rows, and a weight. Raw scores are averaged over ``smooth_points`` neighbouring rows
before calibration: anomalies last minutes, single-row noise does not. Rows are one entity's, in
time order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

from models.autoencoder import AutoencoderDetector
from models.base import BaseDetector
from models.calibration import TailCalibrator, combine
from models.frames import smooth
from models.iforest import IForestDetector
from models.normal_range import NormalRangeDetector

KINDS: dict[str, type[BaseDetector]] = {
    "iforest": IForestDetector,
    "autoencoder": AutoencoderDetector,
    "range": NormalRangeDetector,
}


@dataclass
class Member:
    """One detector of an ensemble: what it is, what it reads, how it is calibrated and weighed."""

    name: str
    kind: str
    detector: BaseDetector
    columns: np.ndarray
    weight: float = 1.0
    calibrator: TailCalibrator = field(default_factory=TailCalibrator)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"ensemble member {self.name!r} has unknown kind {self.kind!r}; known: {', '.join(KINDS)}")
        self.columns = np.asarray(self.columns, dtype=int)


class EnsembleDetector(BaseDetector):
    """Calibrated detectors combined into one score; higher = more anomalous.

    Parameters
    ----------
    members : list of Member
        The detectors, in the order their scores are combined. A member whose detector is already
        fitted (autoencoders trained in one batch for many entities, the normal-range detector
        fitted on its own rows) is kept as it is by :meth:`fit`.
    combine : {"mean", "max"}, default="mean"
        Weighted mean of the calibrated scores, or their max.
    smooth_points : int, default=1
        Rows each raw score is averaged over (centred).
    """

    def __init__(self, *, members: list[Member], combine: str = "mean", smooth_points: int = 1):
        self.members = members
        self.combine = combine
        self.smooth_points = smooth_points

    def fit(self, X, y=None, *, held_out=()):
        """Fit the members not yet fitted on their columns of ``X``; with ``held_out`` (a list of
        matrices, each one entity's rows in time order), also calibrate them (:meth:`calibrate`)."""
        if not self.members:
            raise ValueError("an ensemble needs at least one member")
        X = np.asarray(X, dtype=float)
        for member in self.members:
            if not _fitted(member.detector):
                member.detector.fit(X[:, member.columns])
        if len(held_out):
            self.calibrate(held_out)
        return self

    def calibrate(self, parts) -> np.ndarray:
        """Fit each member's calibrator on its raw scores of ``parts`` (held-out matrices, each one
        entity's rows in time order); returns their combined calibrated scores, concatenated."""
        return self.calibrate_raw([self.raw_scores(part) for part in parts])

    def calibrate_raw(self, raws: list[dict[str, np.ndarray]]) -> np.ndarray:
        """:meth:`calibrate` from the parts' smoothed raw scores (:meth:`raw_scores`), for a caller
        that has them already."""
        calibrated = []
        for member in self.members:
            raw = np.concatenate([r[member.name] for r in raws])
            member.calibrator.fit(raw)
            calibrated.append(member.calibrator.transform(raw))
        self.members_ = self.members
        return combine(calibrated, self.combine, self.weights)

    @property
    def weights(self) -> list[float]:
        return [m.weight for m in self.members]

    def raw_scores(self, X, *, smoothed: bool = True) -> dict[str, np.ndarray]:
        """Each member's raw score, smoothed (or not), by member name."""
        X = np.asarray(X, dtype=float)
        points = self.smooth_points if smoothed else 1
        return {m.name: smooth(m.detector.score_samples(X[:, m.columns]), points) for m in self.members}

    def member_scores(self, X) -> dict[str, np.ndarray]:
        """Each member's calibrated score, by member name."""
        return self.calibrated(self.raw_scores(X))

    def two_scale_scores(self, X) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Each member's calibrated score of its smoothed and of its unsmoothed raw score, by member
        name: the detectors run once, and both go through the calibrator fitted on smoothed
        held-out scores (what the short-event rule of ``models.incidents`` compares)."""
        check_is_fitted(self)
        unsmoothed = self.raw_scores(X, smoothed=False)
        return self.calibrated(self.smoothed(unsmoothed)), self.calibrated(unsmoothed)

    def smoothed(self, unsmoothed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Unsmoothed raw scores (by member name) smoothed as :meth:`raw_scores` smooths them."""
        return {name: smooth(raw, self.smooth_points) for name, raw in unsmoothed.items()}

    def calibrated(self, raws: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Raw scores (by member name) through each member's fitted calibrator."""
        check_is_fitted(self)
        return {m.name: m.calibrator.transform(raws[m.name]) for m in self.members}

    def combined(self, calibrated: dict[str, np.ndarray]) -> np.ndarray:
        """The ensemble score from :meth:`member_scores`."""
        return combine(list(calibrated.values()), self.combine, self.weights)

    def kind_scores(self, calibrated: dict[str, np.ndarray], kind: str) -> np.ndarray:
        """Mean calibrated score of the members of one kind."""
        return np.mean([calibrated[m.name] for m in self.members if m.kind == kind], axis=0)

    def score_samples(self, X) -> np.ndarray:
        return self.combined(self.member_scores(X))

    def member(self, name: str) -> Member:
        for m in self.members:
            if m.name == name:
                return m
        raise KeyError(f"no ensemble member {name!r}; members: {[m.name for m in self.members]}")

    def to_bytes(self) -> bytes:
        raise NotImplementedError("an ensemble is saved inside its entity's archive (models.entity_model)")

    @classmethod
    def from_bytes(cls, data: bytes) -> EnsembleDetector:
        raise NotImplementedError("an ensemble is loaded from its entity's archive (models.entity_model)")


def _fitted(detector: BaseDetector) -> bool:
    try:
        check_is_fitted(detector)
    except NotFittedError:
        return False
    return True
