"""Per-entity fitting: scaler, ensemble, calibration, threshold, profile and drift reference.

An entity's rows are split in time: the first part trains the scaler and the detectors, the
held-out tail calibrates their scores and sets the threshold from the alarm budget, so both see
data the detectors never trained on. The ensemble (``models.ensemble``) is a forest and an
autoencoder on every feature column, the same pair on the columns without one statistic or
several (``ModelParams.subspaces``), and the normal-range detector at ``ModelParams.range_weight``.
:func:`fit_bucket` is what one Spark task runs for its bucket of entities: forests one by one,
the autoencoders of all entities as one batched tensor program. Entities with too little
history keep only their own scaler and profile and borrow the fleet model (:func:`fit_fleet`).
Entity and fleet models are assembled by one function, :func:`_assemble`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fleetwatch.core.specs import DatasetSpec
from models.autoencoder import AutoencoderDetector, entity_seed, fit_batched
from models.calibration import TailCalibrator
from models.drift import DriftReference
from models.ensemble import EnsembleDetector, Member
from models.entity_model import FLEET, EntityModel, TrainingInfo
from models.explain import metric_errors
from models.frames import even_rows, holdout_cut, rows_at, sampling_step, usable_rows
from models.iforest import IForestDetector
from models.normal_range import NormalRangeDetector
from models.params import FeatureLayout, ModelParams
from models.scaling import RobustClipScaler
from models.thresholds import threshold_for_budget


@dataclass
class _Part:
    """One entity's usable rows (time order), scaled with its own scaler and split in time."""

    entity: str
    rows: pd.DataFrame
    cut: int
    scaler: RobustClipScaler
    train: np.ndarray
    held: np.ndarray

    @classmethod
    def of(cls, entity: str, rows: pd.DataFrame, layout: FeatureLayout, params: ModelParams, *, subsample: bool) -> _Part:
        X = layout.features(rows)
        cut = holdout_cut(len(rows), params.holdout_fraction)
        scaler = RobustClipScaler().fit(X[:cut])
        train = scaler.transform(X[even_rows(cut, params.max_train_rows)] if subsample else X[:cut])
        return cls(entity, rows, cut, scaler, train, scaler.transform(X[cut:]))

    def held_matrix(self, layout: FeatureLayout) -> np.ndarray:
        return np.hstack([self.held, layout.values(self.rows.iloc[self.cut :])])


def ensemble_members(
    layout: FeatureLayout,
    params: ModelParams,
    seed: int,
    profile: NormalRangeDetector,
    autoencoders: dict[str, AutoencoderDetector] | None = None,
) -> list[Member]:
    """The members of a new ensemble, in the order their scores combine: the pair on every feature,
    a pair per ``params.subspaces`` entry, then the normal-range detector. ``autoencoders`` (by
    member name) are already trained; the other detectors are fitted by the ensemble."""
    trained = autoencoders or {}

    def pair(suffix: str, columns: np.ndarray) -> list[Member]:
        ae = trained.get("autoencoder" + suffix) or AutoencoderDetector(**params.autoencoder_params(), random_state=seed)
        return [
            Member("iforest" + suffix, "iforest", IForestDetector(**params.iforest_params(), random_state=seed), columns),
            Member("autoencoder" + suffix, "autoencoder", ae, columns),
        ]

    members = pair("", layout.feature_index)
    for stat, cols in layout.member_columns(params.subspaces).items():
        members += pair(f"-no-{stat}", cols)
    if params.range_weight > 0:
        calibrator = TailCalibrator(min_tail_scale=params.range_tail_scale)
        members.append(Member("range", "range", profile, layout.value_index, params.range_weight, calibrator))
    return members


def daily_peak(raw_scores: np.ndarray, rows_per_day: int) -> float:
    """The unsmoothed held-out score that single rows exceed about once a day: the short-event
    rule's reference (``models.incidents``). Smoothing holds single-row noise below the threshold;
    unsmoothed, the same noise reaches far higher, so a short event is measured against the noise
    at its own time scale, not against the smoothed threshold."""
    finite = raw_scores[np.isfinite(raw_scores)]
    if finite.size == 0:
        return float("nan")
    return float(np.quantile(finite, max(0.0, 1.0 - 1.0 / rows_per_day)))


def _assemble(
    entity: str,
    parts: list[_Part],
    train: np.ndarray,
    layout: FeatureLayout,
    spec: DatasetSpec,
    params: ModelParams,
    seed: int,
    ts_col: str,
    autoencoders: dict[str, AutoencoderDetector] | None = None,
) -> EntityModel:
    """An entity's model (one part) or the fleet model (one part per entity, ``entity`` FLEET) from
    the parts' held-out tails and the scaled rows ``train`` its detectors fit on. The profile's
    medians and spreads describe the parts' training rows; its normal ranges cover all their rows."""
    fleet = entity == FLEET
    metrics = list(layout.metrics)
    every = pd.concat([p.rows for p in parts], ignore_index=True) if fleet else parts[0].rows
    trained_on = pd.concat([p.rows.iloc[: p.cut] for p in parts], ignore_index=True) if fleet else every.iloc[: parts[0].cut]
    profile = NormalRangeDetector(
        quantiles=params.explain.normal_range_quantiles, inside_weight=params.explain.inside_range_weight
    )
    profile.fit(trained_on[metrics], range_X=every[metrics])
    # an entity's smoothing and incident rule follow its own pace (the fleet model keeps the spec's)
    step = spec.sampling_seconds if fleet else sampling_step(every[ts_col], spec.sampling_seconds)
    ensemble = EnsembleDetector(
        members=ensemble_members(layout, params, seed, profile, autoencoders),
        combine=params.combine,
        smooth_points=rows_at(params.smooth_points, spec.sampling_seconds, step),
    )
    held = [p.held_matrix(layout) for p in parts]
    ensemble.fit(np.hstack([train, np.full((len(train), len(metrics)), np.nan)]))  # the range member is fitted already
    unsmoothed = [ensemble.raw_scores(h, smoothed=False) for h in held]  # the detectors run once on the held-out rows
    combined = ensemble.calibrate_raw([ensemble.smoothed(raw) for raw in unsmoothed])
    held_ts = (
        pd.concat([p.rows[ts_col].iloc[p.cut :] for p in parts], ignore_index=True)
        if fleet
        else every[ts_col].iloc[parts[0].cut :]
    )
    threshold = threshold_for_budget(
        combined,
        held_ts,
        budget_per_day=spec.alarm_budget,
        gap_minutes=params.gap_minutes,
        sampling_seconds=step,
        entities=np.concatenate([np.full(len(p.rows) - p.cut, p.entity, dtype=object) for p in parts]) if fleet else None,
    )
    raw_peaks = np.concatenate([ensemble.combined(ensemble.calibrated(raw)) for raw in unsmoothed])
    raw_threshold = daily_peak(raw_peaks, spec.rows_per_day)
    center, scale = _error_stats(ensemble.member("autoencoder").detector, train, layout, params.error_floor)
    return EntityModel(
        entity=entity,
        scope="fleet" if fleet else "entity",
        scaler=None if fleet else parts[0].scaler,
        profile=profile,
        drift=DriftReference().fit(every, list(layout.feature_cols)),
        trained=_training_info(every, layout, ts_col),
        ensemble=ensemble,
        threshold=threshold,
        raw_threshold=raw_threshold,
        error_center=center,
        error_norm=scale,
    )


def history_rows_needed(ts, spec: DatasetSpec, params: ModelParams) -> int:
    """Rows an entity needs for its own models: ``params.min_history_rows`` (counted at the spec's
    sampling interval) as the same span of time at the entity's own pace."""
    return rows_at(params.min_history_rows, spec.sampling_seconds, sampling_step(ts, spec.sampling_seconds), least=10)


def fit_entity(
    frame: pd.DataFrame,
    *,
    layout: FeatureLayout,
    spec: DatasetSpec,
    params: ModelParams,
    random_state: int,
    autoencoders: dict[str, AutoencoderDetector] | None = None,
    entity_col: str = "entity_id",
    ts_col: str = "ts",
) -> EntityModel:
    """Fit one entity's models on its rows of the training window.

    The first ``1 - holdout_fraction`` of the rows (in time) fit the scaler and the detectors;
    the rest calibrate the scores and set the threshold for ``spec.alarm_budget``. Seeds derive
    from ``random_state`` and the entity id. ``autoencoders`` (by member name), when given, are
    the entity's already trained networks (from :func:`fit_bucket`'s batched training).
    """
    layout.check(frame, entity_col, ts_col)
    entities = frame[entity_col].unique()
    if len(entities) != 1:
        raise ValueError(f"fit_entity needs the rows of one entity, got {len(entities)}")
    entity = str(entities[0])
    rows = usable_rows(frame, layout.feature_cols, ts_col)
    if len(rows) < (needed := history_rows_needed(rows[ts_col], spec, params)):
        raise ValueError(f"entity {entity!r} has {len(rows)} usable rows, fewer than the {needed} its history needs")
    part = _Part.of(entity, rows, layout, params, subsample=True)
    return _assemble(entity, [part], part.train, layout, spec, params, entity_seed(random_state, entity), ts_col, autoencoders)


def fit_bucket(
    frame: pd.DataFrame,
    *,
    layout: FeatureLayout,
    spec: DatasetSpec,
    params: ModelParams,
    random_state: int,
    entity_col: str = "entity_id",
    ts_col: str = "ts",
) -> list[EntityModel]:
    """Fit every entity of a bucket (what one Spark task runs); returns models sorted by entity id.

    Entities with the history of ``history_rows_needed`` get their own models; their
    autoencoders train together in one :func:`models.autoencoder.fit_batched` call per ensemble
    member. Shorter ones come back with scope ``fleet``: a scaler, profile and drift reference of
    their own rows, the rest borrowed from the fleet model at scoring time.
    """
    layout.check(frame, entity_col, ts_col)
    parts: dict[str, _Part] = {}
    models: list[EntityModel] = []
    for entity, group in frame.groupby(entity_col, sort=True):
        rows = usable_rows(group, layout.feature_cols, ts_col)
        if len(rows) >= history_rows_needed(rows[ts_col], spec, params):
            parts[str(entity)] = _Part.of(str(entity), rows, layout, params, subsample=True)
        else:
            models.append(_fleet_scope(str(entity), rows, layout, params, ts_col))
    if parts:
        columns = {"": None, **{f"-no-{stat}": cols for stat, cols in layout.member_columns(params.subspaces).items()}}
        batched = {
            suffix: fit_batched(
                {e: p.train if cols is None else p.train[:, cols] for e, p in parts.items()},
                **params.autoencoder_params(),
                random_state=random_state,
            )
            for suffix, cols in columns.items()
        }
        for entity, part in parts.items():
            aes = {"autoencoder" + suffix: by_entity[entity] for suffix, by_entity in batched.items()}
            models.append(
                _assemble(entity, [part], part.train, layout, spec, params, entity_seed(random_state, entity), ts_col, aes)
            )
    return sorted(models, key=lambda m: m.entity)


def fit_fleet(
    frame: pd.DataFrame,
    *,
    layout: FeatureLayout,
    spec: DatasetSpec,
    params: ModelParams,
    random_state: int,
    entity_col: str = "entity_id",
    ts_col: str = "ts",
) -> EntityModel:
    """The fleet model (entity ``__fleet__``) for entities with little or no history.

    Each entity's rows are split in time and scaled by a scaler fitted on its own training
    part; the detectors train on the pooled scaled rows (an even subsample of
    ``params.fleet_train_rows``), and the pooled held-out rows calibrate them and set one
    threshold, with incidents counted per entity. ``frame`` may be a row sample of the fleet.
    """
    layout.check(frame, entity_col, ts_col)
    parts = []
    for entity, group in frame.groupby(entity_col, sort=True):
        rows = usable_rows(group, layout.feature_cols, ts_col)
        if len(rows) >= 2:
            parts.append(_Part.of(str(entity), rows, layout, params, subsample=False))
    if not parts:
        raise ValueError("fit_fleet: no entity has 2 or more usable rows")
    pooled = np.vstack([p.train for p in parts])
    train = pooled[even_rows(len(pooled), params.fleet_train_rows)]
    return _assemble(FLEET, parts, train, layout, spec, params, entity_seed(random_state, FLEET), ts_col)


def _fleet_scope(entity: str, rows: pd.DataFrame, layout: FeatureLayout, params: ModelParams, ts_col: str) -> EntityModel:
    """A short-history entity: its own scaler, profile and drift reference only."""
    has_rows = len(rows) > 0
    metrics = list(layout.metrics)
    return EntityModel(
        entity=entity,
        scope="fleet",
        scaler=RobustClipScaler().fit(layout.features(rows)) if has_rows else None,
        profile=NormalRangeDetector(
            quantiles=params.explain.normal_range_quantiles, inside_weight=params.explain.inside_range_weight
        ).fit(rows[metrics]),
        drift=DriftReference().fit(rows, list(layout.feature_cols)) if has_rows else None,
        trained=_training_info(rows, layout, ts_col),
    )


def _error_stats(ae: AutoencoderDetector, train: np.ndarray, layout: FeatureLayout, floor: float) -> tuple[dict, dict]:
    """Median and IQR (floored) of each metric's training reconstruction error.

    A metric reconstructed almost perfectly in training (a constant one) would turn any later
    error into a huge z-score; no metric's scale goes below the typical metric's IQR.
    """
    errors = metric_errors(ae.feature_errors(train), list(layout.feature_metric))
    q25, median, q75 = (errors.quantile(q, axis=0) for q in (0.25, 0.5, 0.75))
    iqr = q75 - q25
    least = max(float(iqr.median()), floor)
    return {m: float(v) for m, v in median.items()}, {m: max(float(iqr[m]), least) for m in errors.columns}


def _training_info(rows: pd.DataFrame, layout: FeatureLayout, ts_col: str) -> TrainingInfo:
    """Row count, time window and a hash of the rows (timestamps and features) a model saw."""
    hashed = pd.util.hash_pandas_object(rows[[ts_col, *layout.feature_cols]], index=False).to_numpy()
    window = (rows[ts_col].min(), rows[ts_col].max()) if len(rows) else None
    return TrainingInfo(len(rows), window, hashlib.sha256(hashed.tobytes()).hexdigest()[:16])
