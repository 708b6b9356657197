"""Per-entity fitting and scoring: scaler, both detectors, calibration, threshold, baselines.

An entity's rows are split in time: the first part trains the scaler and the detectors, the
held-out tail calibrates their scores and sets the threshold from the alarm budget, so both see
data the detectors never trained on. Besides the pair of detectors on every feature column, each
entity has one pair per :class:`Subspace`: the same detectors on the columns without one
statistic, or several (``ModelParams.subspaces``), and the normal-range detector, which sums how
far each metric is outside its training range (``models.explain.range_scores``, the evidence the
explanations rank by); the combined score is the weighted mean of all calibrated scores, the
normal-range detector counting ``ModelParams.range_weight`` times. ``fit_bucket`` is what one Spark task runs for its bucket of
entities: scalers and forests one by one, the autoencoders of all entities as one batched tensor
program. Entities with too little history keep only their own scaler and borrow the fleet
model's detectors, calibration and threshold.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from feature_store.views import STATISTICS, statistic_of
from fleetwatch.core.specs import DatasetSpec
from models.autoencoder import AutoencoderDetector, entity_seed, fit_batched
from models.calibration import TailCalibrator, combine
from models.drift import DriftReference
from models.explain import metric_errors, normal_ranges, range_scores, spreads
from models.iforest import IForestDetector
from models.scaling import RobustClipScaler
from models.thresholds import threshold_for_budget

FLEET = "__fleet__"
DETECTORS = ("iforest", "autoencoder")
MEMBER_MARK = "-no-"  # an ensemble member's calibrator is named <detector>-no-<statistic>[+<statistic>...]
RANGE = "range"  # the normal-range detector's calibrator
# Its calibrator's tail grows by one decade per ln(10) spreads beyond the held-out maximum, at most:
# SMD's held-out tails are 0.45-77 spreads already (AUPRC unchanged with the floor), while a window
# whose held-out rows never left their ranges would otherwise make any small exit look extreme.
RANGE_TAIL_SCALE = 1.0
ERROR_FLOOR = 1e-6  # floor on a metric's median training error, so a perfectly fitted metric cannot divide by 0
ARCHIVE_FORMAT = 1


class ModelParams(BaseModel):
    """Hyper-parameters of one training run (logged to MLflow, saved in the bundle)."""

    model_config = ConfigDict(extra="forbid")

    iforest_n_estimators: int = Field(100, ge=1)
    # 2048 rows a tree instead of the usual 256: on SMD's 7 machines mean AUPRC rose by 0.025 with each
    # of two run seeds (up on 6 and on 5 machines, down by at most 0.01 on any); trees stay <= 11 deep.
    iforest_max_samples: int = Field(2048, ge=2)
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
    # On SMD's 7 machines an ensemble of three detector pairs (all columns, without the window
    # means, without the window standard deviations) raised mean AUPRC by 0.010 and 0.008 with two
    # run seeds over the pair on all columns; three pairs on all columns with other seeds did not.
    # A fourth pair without the level (values and window means) sees only how a metric varies,
    # whatever its level; with the normal-range detector beside it, see ``range_weight``.
    subspaces: tuple[str, ...] = Field(
        ("mean", "std", "value+mean"),
        description="Feature statistics each extra ensemble member leaves out (one member per entry; "
        "several statistics joined by '+').",
    )
    # The normal-range detector (``models.explain.range_scores``) counts as this many members in
    # the mean. On SMD (7 machines, 4 pairs beside it): weight 2 gave mean AUPRC 0.589 / 0.585 and
    # best F1 0.611 / 0.607 with run seeds 42 / 7, against 0.586 / 0.581 and 0.606 / 0.602 with
    # weight 1 and 0.586 / 0.604 with weight 3 (seed 42); without it 0.553 / 0.584.
    range_weight: float = Field(2.0, ge=0, description="Weight of the normal-range detector in the mean (0: none).")
    smooth_points: int = Field(
        5, ge=1, description="Rows each raw detector score is averaged over (centred, within a scored partition)."
    )

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


@dataclass
class Subspace:
    """One extra ensemble member: a forest and an autoencoder trained on the feature columns
    without the statistics of ``leaves_out`` (one, or several joined by '+'; ``columns`` indexes
    the scaled feature matrix)."""

    leaves_out: str
    columns: np.ndarray
    iforest: IForestDetector
    autoencoder: AutoencoderDetector

    @property
    def suffix(self) -> str:
        """What the member's calibrator names end with: ``-no-<statistic>``."""
        return f"{MEMBER_MARK}{self.leaves_out}"


def subspace_columns(feature_cols: list[str], leave_out: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Column indices of each member, by what it leaves out (``"mean"``, ``"value+mean"``); a
    member that would keep every column or none (the view has no such statistic, or only those)
    is skipped."""
    stats = np.array([statistic_of(c) for c in feature_cols])
    members = {}
    for stat in dict.fromkeys(leave_out):
        keep = np.flatnonzero(~np.isin(stats, stat.split("+")))
        if 0 < keep.size < len(feature_cols):
            members[stat] = keep
    return members


def fit_subspaces(
    train: np.ndarray,
    feature_cols: list[str],
    params: "ModelParams",
    seed: int,
    autoencoders: dict[str, AutoencoderDetector] | None = None,
) -> list[Subspace]:
    """The ensemble members of ``params.subspaces`` fitted on scaled training rows: a forest each,
    and an autoencoder each unless ``autoencoders`` (by statistic left out) are already trained."""
    autoencoders = autoencoders or {}
    members = []
    for stat, cols in subspace_columns(feature_cols, params.subspaces).items():
        part = train[:, cols]
        ae = autoencoders.get(stat) or AutoencoderDetector(**params.autoencoder_params(), random_state=seed).fit(part)
        members.append(Subspace(stat, cols, IForestDetector(**params.iforest_params(), random_state=seed).fit(part), ae))
    return members


@dataclass
class EntityModel:
    """Everything that scores one entity (scope ``entity``), or only its scaler and baselines
    (scope ``fleet``: detectors, calibration, threshold and error norms come from the fleet
    model, whose own entry is named ``__fleet__``)."""

    entity: str
    scope: Literal["entity", "fleet"]
    scaler: RobustClipScaler | None
    iforest: IForestDetector | None
    autoencoder: AutoencoderDetector | None
    calibrators: dict[str, TailCalibrator]
    threshold: float
    baselines: dict[str, float]
    error_norm: dict[str, float]
    drift: DriftReference | None
    n_train_rows: int
    window: tuple[pd.Timestamp, pd.Timestamp] | None
    combine: str = "mean"
    fingerprint: str = ""
    error_center: dict[str, float] = field(default_factory=dict)
    smooth_points: int = 1
    spreads: dict[str, float] = field(default_factory=dict)
    normal_ranges: dict[str, list[float]] = field(default_factory=dict)
    subspaces: list[Subspace] = field(default_factory=list)
    range_weight: float = 0.0  # bundles saved before the normal-range detector have none

    def to_bytes(self) -> bytes:
        """One zip archive: ``manifest.json``, ``arrays.npz``, ``iforest.skops``, ``autoencoder.pt``,
        and ``subspace-<statistic>/`` with the same two files for each ensemble member.

        Nothing in it is a pickle: the arrays load with ``allow_pickle=False``, the forest with
        skops' trusted-type list and the autoencoder with ``torch.load(weights_only=True)``.
        """
        arrays: dict[str, np.ndarray] = {}
        manifest = {
            "format": ARCHIVE_FORMAT,
            "entity": self.entity,
            "scope": self.scope,
            "threshold": None if np.isnan(self.threshold) else float(self.threshold),
            "baselines": self.baselines,
            "spreads": self.spreads,
            "normal_ranges": self.normal_ranges,
            "error_norm": self.error_norm,
            "error_center": self.error_center,
            "smooth_points": int(self.smooth_points),
            "n_train_rows": int(self.n_train_rows),
            "window": None if self.window is None else [pd.Timestamp(t).isoformat() for t in self.window],
            "combine": self.combine,
            "range_weight": float(self.range_weight),
            "fingerprint": self.fingerprint,
            "calibrators": {},
            "subspaces": [{"leaves_out": m.leaves_out, "columns": m.columns.tolist()} for m in self.subspaces],
        }
        if self.scaler is not None:
            manifest["scaler"] = self.scaler.get_params()
            arrays.update(_prefixed("scaler", self.scaler.state_arrays()))
        if self.drift is not None:
            manifest["drift"] = self.drift.get_params()
            arrays.update(_prefixed("drift", self.drift.state_arrays()))
        for name, cal in self.calibrators.items():
            manifest["calibrators"][name] = cal.get_params()
            arrays.update(_prefixed(f"cal_{name}", cal.state_arrays()))
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("manifest.json", json.dumps(manifest, sort_keys=True))
            npz = io.BytesIO()
            np.savez(npz, **arrays)
            archive.writestr("arrays.npz", npz.getvalue())
            if self.iforest is not None:
                archive.writestr("iforest.skops", self.iforest.to_bytes())
            if self.autoencoder is not None:
                archive.writestr("autoencoder.pt", self.autoencoder.to_bytes())
            for member in self.subspaces:
                archive.writestr(f"subspace-{member.leaves_out}/iforest.skops", member.iforest.to_bytes())
                archive.writestr(f"subspace-{member.leaves_out}/autoencoder.pt", member.autoencoder.to_bytes())
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "EntityModel":
        """The model written by :meth:`to_bytes`."""
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = set(archive.namelist())
            manifest = json.loads(archive.read("manifest.json"))
            if manifest.get("format") != ARCHIVE_FORMAT:
                raise ValueError(f"entity model archive has format {manifest.get('format')}, expected {ARCHIVE_FORMAT}")
            with np.load(io.BytesIO(archive.read("arrays.npz")), allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
            iforest = IForestDetector.from_bytes(archive.read("iforest.skops")) if "iforest.skops" in names else None
            ae = AutoencoderDetector.from_bytes(archive.read("autoencoder.pt")) if "autoencoder.pt" in names else None
            subspaces = [
                Subspace(
                    leaves_out=m["leaves_out"],
                    columns=np.asarray(m["columns"], dtype=int),
                    iforest=IForestDetector.from_bytes(archive.read(f"subspace-{m['leaves_out']}/iforest.skops")),
                    autoencoder=AutoencoderDetector.from_bytes(archive.read(f"subspace-{m['leaves_out']}/autoencoder.pt")),
                )
                for m in manifest.get("subspaces", [])
            ]
        scaler = drift = None
        if "scaler" in manifest:
            scaler = RobustClipScaler.from_state_arrays(manifest["scaler"], _unprefixed("scaler", arrays))
        if "drift" in manifest:
            drift = DriftReference.from_state_arrays(manifest["drift"], _unprefixed("drift", arrays))
        calibrators = {
            name: TailCalibrator.from_state_arrays(params, _unprefixed(f"cal_{name}", arrays))
            for name, params in manifest["calibrators"].items()
        }
        window = manifest["window"]
        return cls(
            entity=manifest["entity"],
            scope=manifest["scope"],
            scaler=scaler,
            iforest=iforest,
            autoencoder=ae,
            calibrators=calibrators,
            threshold=float("nan") if manifest["threshold"] is None else manifest["threshold"],
            baselines=manifest["baselines"],
            spreads=manifest.get("spreads", {}),
            normal_ranges=manifest.get("normal_ranges", {}),
            error_norm=manifest["error_norm"],
            error_center=manifest.get("error_center", {}),
            smooth_points=int(manifest.get("smooth_points", 1)),
            drift=drift,
            n_train_rows=manifest["n_train_rows"],
            window=None if window is None else (pd.Timestamp(window[0]), pd.Timestamp(window[1])),
            combine=manifest["combine"],
            range_weight=float(manifest.get("range_weight", 0.0)),
            fingerprint=manifest["fingerprint"],
            subspaces=subspaces,
        )


@dataclass
class _Split:
    """One entity's usable rows, scaled and split in time, ready for the detectors."""

    entity: str
    rows: pd.DataFrame
    cut: int
    scaler: RobustClipScaler
    train: np.ndarray
    held: np.ndarray


def fit_entity(
    frame: pd.DataFrame,
    *,
    feature_cols: list[str],
    feature_metric: list[str],
    metrics: list[str],
    spec: DatasetSpec,
    params: ModelParams,
    random_state: int,
    autoencoder: AutoencoderDetector | None = None,
    entity_col: str = "entity_id",
    ts_col: str = "ts",
) -> EntityModel:
    """Fit one entity's models on its rows of the training window.

    The first ``1 - holdout_fraction`` of the rows (in time) fit the scaler and both detectors;
    the rest calibrate the scores and set the threshold for ``spec.alarm_budget``. Seeds derive
    from ``random_state`` and the entity id. ``autoencoder``, when given, is the entity's
    already trained network (from :func:`fit_bucket`'s batched training).
    """
    _check_columns(frame, feature_cols, feature_metric, metrics, entity_col, ts_col)
    entities = frame[entity_col].unique()
    if len(entities) != 1:
        raise ValueError(f"fit_entity needs the rows of one entity, got {len(entities)}")
    entity = str(entities[0])
    rows = _usable(frame, feature_cols, ts_col)
    if len(rows) < params.min_history_rows:
        raise ValueError(
            f"entity {entity!r} has {len(rows)} usable rows, fewer than min_history_rows={params.min_history_rows}"
        )
    split = _split(entity, rows, feature_cols, params)
    if autoencoder is None:
        seed = entity_seed(random_state, entity)
        autoencoder = AutoencoderDetector(**params.autoencoder_params(), random_state=seed).fit(split.train)
    return _finish(split, autoencoder, {}, feature_cols, feature_metric, metrics, spec, params, random_state, ts_col)


def fit_bucket(
    frame: pd.DataFrame,
    *,
    feature_cols: list[str],
    feature_metric: list[str],
    metrics: list[str],
    spec: DatasetSpec,
    params: ModelParams,
    random_state: int,
    entity_col: str = "entity_id",
    ts_col: str = "ts",
) -> list[EntityModel]:
    """Fit every entity of a bucket (what one Spark task runs); returns models by entity id.

    Entities with at least ``params.min_history_rows`` usable rows get their own models; their
    autoencoders train together in one :func:`models.autoencoder.fit_batched` call per ensemble
    member. Shorter
    ones come back with scope ``fleet``: a scaler, baselines and drift reference of their own
    rows, the rest borrowed from the fleet model at scoring time.
    """
    _check_columns(frame, feature_cols, feature_metric, metrics, entity_col, ts_col)
    splits: dict[str, _Split] = {}
    models: list[EntityModel] = []
    for entity, group in frame.groupby(entity_col, sort=True):
        rows = _usable(group, feature_cols, ts_col)
        if len(rows) >= params.min_history_rows:
            splits[str(entity)] = _split(str(entity), rows, feature_cols, params)
        else:
            models.append(_fleet_scope(str(entity), rows, feature_cols, metrics, params, ts_col))
    if splits:
        trained = fit_batched({e: s.train for e, s in splits.items()}, **params.autoencoder_params(), random_state=random_state)
        members = {
            stat: fit_batched({e: s.train[:, cols] for e, s in splits.items()}, **params.autoencoder_params(), random_state=random_state)
            for stat, cols in subspace_columns(feature_cols, params.subspaces).items()
        }
        for entity, split in splits.items():
            member_aes = {stat: by_entity[entity] for stat, by_entity in members.items()}
            models.append(
                _finish(split, trained[entity], member_aes, feature_cols, feature_metric, metrics, spec, params, random_state, ts_col)
            )
    return sorted(models, key=lambda m: m.entity)


def fit_fleet(
    frame: pd.DataFrame,
    *,
    feature_cols: list[str],
    feature_metric: list[str],
    metrics: list[str],
    spec: DatasetSpec,
    params: ModelParams,
    random_state: int,
    entity_col: str = "entity_id",
    ts_col: str = "ts",
) -> EntityModel:
    """The fleet model (entity ``__fleet__``) for entities with little or no history.

    Each entity's rows are split in time and scaled by a scaler fitted on its own training
    part; one forest and one autoencoder train on the pooled scaled rows (an even subsample of
    ``params.fleet_train_rows``), and the pooled held-out rows calibrate them and set one
    threshold, with incidents counted per entity. ``frame`` may be a row sample of the fleet.
    """
    _check_columns(frame, feature_cols, feature_metric, metrics, entity_col, ts_col)
    train_parts, held_parts, held_ts, held_entity, raw_train, raw_all, raw_held = [], [], [], [], [], [], []
    for entity, group in frame.groupby(entity_col, sort=True):
        rows = _usable(group, feature_cols, ts_col)
        if len(rows) < 2:
            continue
        X = rows[feature_cols].to_numpy(dtype=float)
        cut = _cut(len(rows), params.holdout_fraction)
        scaler = RobustClipScaler().fit(X[:cut])
        train_parts.append(scaler.transform(X[:cut]))
        held_parts.append(scaler.transform(X[cut:]))
        held_ts.append(rows[ts_col].iloc[cut:])
        held_entity.append(np.full(len(rows) - cut, str(entity), dtype=object))
        raw_train.append(rows.iloc[:cut])
        raw_all.append(rows)
        raw_held.append(rows.iloc[cut:])
    if not train_parts:
        raise ValueError("fit_fleet: no entity has 2 or more usable rows")
    pooled = np.vstack(train_parts)
    train = pooled[_even(len(pooled), params.fleet_train_rows)]
    held = np.vstack(held_parts)
    seed = entity_seed(random_state, FLEET)
    iforest = IForestDetector(**params.iforest_params(), random_state=seed).fit(train)
    ae = AutoencoderDetector(**params.autoencoder_params(), random_state=seed).fit(train)
    subspaces = fit_subspaces(train, feature_cols, params, seed)
    center, scale = _error_stats(ae, train, feature_metric)
    all_rows = pd.concat(raw_all, ignore_index=True)
    trained_on = pd.concat(raw_train, ignore_index=True)
    stats = (_medians(trained_on, metrics), spreads(trained_on, metrics), normal_ranges(all_rows, metrics))
    calibrators, combined = _calibrate(
        iforest, ae, subspaces, held_parts, feature_metric, center, scale, params, raw_held, stats if params.range_weight > 0 else None
    )
    threshold = threshold_for_budget(
        combined,
        pd.concat(held_ts, ignore_index=True),
        budget_per_day=spec.alarm_budget,
        gap_minutes=params.gap_minutes,
        sampling_seconds=spec.sampling_seconds,
        entities=np.concatenate(held_entity),
    )
    return EntityModel(
        entity=FLEET,
        scope="fleet",
        scaler=None,
        iforest=iforest,
        autoencoder=ae,
        calibrators=calibrators,
        threshold=threshold,
        baselines=stats[0],
        spreads=stats[1],
        normal_ranges=stats[2],
        error_norm=scale,
        error_center=center,
        smooth_points=params.smooth_points,
        drift=DriftReference().fit(all_rows, feature_cols),
        n_train_rows=len(all_rows),
        window=(all_rows[ts_col].min(), all_rows[ts_col].max()),
        combine=params.combine,
        range_weight=params.range_weight,
        fingerprint=_fingerprint(all_rows, feature_cols, ts_col),
        subspaces=subspaces,
    )


def score_entity(
    model: EntityModel | None,
    frame: pd.DataFrame,
    *,
    feature_cols: list[str],
    feature_metric: list[str],
    fleet: EntityModel | None,
    entity_col: str = "entity_id",
    ts_col: str = "ts",
) -> pd.DataFrame:
    """Calibrated scores of one entity's rows, in the frame's row order.

    ``model`` of scope ``entity`` scores with its own detectors; scope ``fleet`` uses its own
    scaler with the ``fleet`` model's detectors, calibration and threshold; ``None`` (an entity
    the bundle does not know) is scaled by robust statistics of ``frame`` itself and scored by
    the fleet model. Missing feature values count as the entity's median. The normal-range
    detector, where the scorer has one, measures each metric against the scorer's ranges (the
    fleet's pooled ones for an entity the fleet model scores: what its calibrator saw).

    Returns
    -------
    DataFrame
        ``entity_id``, ``ts``, ``iforest_score``, ``ae_score`` (calibrated; the mean over the
        ensemble members), ``score`` (all members' calibrated scores combined), ``threshold``, ``flagged`` (score above threshold), ``scope`` and one
        ``err__<metric>`` column per metric (normalised reconstruction error).
    """
    own = model is not None and model.scope == "entity"
    scorer = model if own else fleet
    if scorer is None:
        raise ValueError("score_entity: an entity without its own model needs the fleet model")
    if model is not None and model.scaler is not None:
        scaler = model.scaler
    else:
        finite = frame[feature_cols].to_numpy(dtype=float, na_value=np.nan)
        finite = finite[np.isfinite(finite).all(axis=1)]
        if len(finite) == 0:
            raise ValueError(f"score_entity: no row of entity {frame[entity_col].iloc[0]!r} has all features finite")
        scaler = RobustClipScaler().fit(finite)
    Z = scaler.transform(_impute(frame, feature_cols, scaler.center_))
    order = np.argsort(frame[ts_col].to_numpy(), kind="stable")
    stats = _range_stats(scorer) if RANGE in scorer.calibrators else None
    metric_values = frame[list(dict.fromkeys(feature_metric))].iloc[order].reset_index(drop=True) if stats else None
    raw, sorted_errors = detector_scores(
        scorer.iforest, scorer.autoencoder, Z[order], feature_metric,
        scorer.error_center or None, scorer.error_norm, scorer.smooth_points, scorer.subspaces, stats, metric_values,
    )
    back = np.empty_like(order)
    back[order] = np.arange(order.size)
    calibrated = {name: scorer.calibrators[name].transform(values[back]) for name, values in raw.items()}
    score = combine(list(calibrated.values()), scorer.combine, _weights(calibrated, scorer.range_weight))
    by_kind = {kind: np.mean([v for n, v in calibrated.items() if n.split(MEMBER_MARK)[0] == kind], axis=0) for kind in DETECTORS}
    errors = sorted_errors.iloc[back].reset_index(drop=True)
    out = pd.DataFrame(
        {
            "entity_id": frame[entity_col].astype(str).to_numpy(),
            "ts": frame[ts_col].to_numpy(),
            "iforest_score": by_kind["iforest"],
            "ae_score": by_kind["autoencoder"],
            "score": score,
            "threshold": scorer.threshold,
            "flagged": score > scorer.threshold,
            "scope": "entity" if own else "fleet",
        }
    )
    out["ts"] = out["ts"].astype(frame[ts_col].dtype)
    for metric in errors.columns:
        out[f"err__{metric}"] = errors[metric].to_numpy()
    return out


def _finish(
    split: _Split,
    autoencoder: AutoencoderDetector,
    member_aes: dict[str, AutoencoderDetector],
    feature_cols: list[str],
    feature_metric: list[str],
    metrics: list[str],
    spec: DatasetSpec,
    params: ModelParams,
    random_state: int,
    ts_col: str,
) -> EntityModel:
    """Forests, calibration, threshold, baselines and drift reference of a split entity whose
    autoencoder is trained (and its members' in ``member_aes``, by statistic left out; the
    missing ones are trained here)."""
    seed = entity_seed(random_state, split.entity)
    iforest = IForestDetector(**params.iforest_params(), random_state=seed).fit(split.train)
    subspaces = fit_subspaces(split.train, feature_cols, params, seed, member_aes)
    center, scale = _error_stats(autoencoder, split.train, feature_metric)
    trained_on = split.rows.iloc[: split.cut]
    stats = (_medians(trained_on, metrics), spreads(trained_on, metrics), normal_ranges(split.rows, metrics))
    calibrators, combined = _calibrate(
        iforest, autoencoder, subspaces, [split.held], feature_metric, center, scale, params,
        [split.rows.iloc[split.cut :]], stats if params.range_weight > 0 else None,
    )
    threshold = threshold_for_budget(
        combined,
        split.rows[ts_col].iloc[split.cut :],
        budget_per_day=spec.alarm_budget,
        gap_minutes=params.gap_minutes,
        sampling_seconds=spec.sampling_seconds,
    )
    return EntityModel(
        entity=split.entity,
        scope="entity",
        scaler=split.scaler,
        iforest=iforest,
        autoencoder=autoencoder,
        calibrators=calibrators,
        threshold=threshold,
        baselines=stats[0],
        spreads=stats[1],
        normal_ranges=stats[2],
        error_norm=scale,
        error_center=center,
        smooth_points=params.smooth_points,
        drift=DriftReference().fit(split.rows, feature_cols),
        n_train_rows=len(split.rows),
        window=(split.rows[ts_col].iloc[0], split.rows[ts_col].iloc[-1]),
        combine=params.combine,
        range_weight=params.range_weight,
        fingerprint=_fingerprint(split.rows, feature_cols, ts_col),
        subspaces=subspaces,
    )


def _fleet_scope(
    entity: str, rows: pd.DataFrame, feature_cols: list[str], metrics: list[str], params: ModelParams, ts_col: str
) -> EntityModel:
    """A short-history entity: its own scaler, baselines and drift reference only."""
    has_rows = len(rows) > 0
    return EntityModel(
        entity=entity,
        scope="fleet",
        scaler=RobustClipScaler().fit(rows[feature_cols].to_numpy(dtype=float)) if has_rows else None,
        iforest=None,
        autoencoder=None,
        calibrators={},
        threshold=float("nan"),
        baselines=_medians(rows, metrics),
        spreads=spreads(rows, metrics),
        normal_ranges=normal_ranges(rows, metrics),
        error_norm={},
        drift=DriftReference().fit(rows, feature_cols) if has_rows else None,
        n_train_rows=len(rows),
        window=(rows[ts_col].iloc[0], rows[ts_col].iloc[-1]) if has_rows else None,
        combine=params.combine,
        fingerprint=_fingerprint(rows, feature_cols, ts_col),
    )


def detector_scores(
    iforest: IForestDetector,
    autoencoder: AutoencoderDetector,
    Z: np.ndarray,
    feature_metric: list[str],
    center: dict[str, float] | None,
    scale: dict[str, float],
    smooth_points: int,
    subspaces: list[Subspace] = (),
    range_stats: tuple[dict, dict, dict] | None = None,
    values: pd.DataFrame | None = None,
) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    """Raw scores of both detectors (and of each ensemble member's, named ``<detector>-no-<stat>``)
    for scaled rows of one entity in time order, and the normalised per-metric errors of the
    autoencoder on all columns. With ``range_stats`` (baselines, spreads and normal ranges of the
    metrics) and the rows' metric ``values``, also the normal-range detector's (named ``range``).

    Both raw scores are averaged over ``smooth_points`` neighbouring rows (anomalies last minutes,
    single-row noise does not). The per-metric errors are robust z-scores against the metric's
    training errors, on one scale across metrics: the ``err__`` score columns (incidents rank
    their metrics by ``models.explain.deviations``, and by these only for bundles saved without
    spreads). (The maximum of those z-scores as the autoencoder's score was measured on SMD and
    ranked rows worse than the mean squared error; so did PCA, IsolationForest or autoencoder
    on the raw metrics alone, KMeans over 30-minute windows, and combining with ``max``.)
    """
    errors = metric_errors(autoencoder.feature_errors(Z), feature_metric, scale, center)
    raw = {
        "iforest": _smooth(iforest.score_samples(Z), smooth_points),
        "autoencoder": _smooth(autoencoder.score_samples(Z), smooth_points),
    }
    for member in subspaces:
        part = Z[:, member.columns]
        raw["iforest" + member.suffix] = _smooth(member.iforest.score_samples(part), smooth_points)
        raw["autoencoder" + member.suffix] = _smooth(member.autoencoder.score_samples(part), smooth_points)
    if range_stats is not None:
        raw[RANGE] = _smooth(range_scores(values, *range_stats), smooth_points)
    return raw, errors


def _range_stats(model: EntityModel) -> tuple[dict, dict, dict]:
    return model.baselines, model.spreads, model.normal_ranges


def _weights(calibrated: dict[str, np.ndarray], range_weight: float) -> list[float]:
    """Each calibrated score's weight in the mean: 1, the normal-range detector ``range_weight``."""
    return [range_weight if name == RANGE else 1.0 for name in calibrated]


def _smooth(values: np.ndarray, points: int) -> np.ndarray:
    """Centred moving average over ``points`` rows (shorter at the ends)."""
    if points <= 1:
        return values
    return pd.DataFrame(values).rolling(points, center=True, min_periods=1).mean().to_numpy().reshape(values.shape)


def _calibrate(
    iforest, autoencoder, subspaces, held_parts, feature_metric, center, scale, params, held_rows=None, range_stats=None
) -> tuple[dict[str, TailCalibrator], np.ndarray]:
    """Tail calibrators (one per detector and ensemble member) fitted on held-out raw scores (each
    part one entity's rows in time order; ``held_rows`` their metric values, for the normal-range
    detector when ``range_stats`` are given), and the combined held-out scores."""
    metrics = list(dict.fromkeys(feature_metric))
    raws = [
        detector_scores(
            iforest, autoencoder, part, feature_metric, center, scale, params.smooth_points, subspaces,
            range_stats, None if range_stats is None else held_rows[i][metrics].reset_index(drop=True),
        )[0]
        for i, part in enumerate(held_parts)
    ]
    calibrators, calibrated = {}, []
    for name in raws[0]:
        raw = np.concatenate([r[name] for r in raws])
        calibrators[name] = TailCalibrator(min_tail_scale=RANGE_TAIL_SCALE if name == RANGE else 0.0).fit(raw)
        calibrated.append(calibrators[name].transform(raw))
    return calibrators, combine(calibrated, params.combine, _weights(calibrators, params.range_weight))


def _split(entity: str, rows: pd.DataFrame, feature_cols: list[str], params: ModelParams) -> _Split:
    X = rows[feature_cols].to_numpy(dtype=float)
    cut = _cut(len(rows), params.holdout_fraction)
    scaler = RobustClipScaler().fit(X[:cut])
    train = scaler.transform(X[_even(cut, params.max_train_rows)])
    return _Split(entity, rows, cut, scaler, train, scaler.transform(X[cut:]))


def _cut(n: int, holdout_fraction: float) -> int:
    """Rows before the held-out tail: at least one on each side when n >= 2."""
    return min(max(int(round(n * (1 - holdout_fraction))), 1), n - 1)


def _even(n: int, k: int) -> np.ndarray:
    """Indices of at most ``k`` rows spread evenly over ``n`` (all of them when n <= k)."""
    return np.unique(np.linspace(0, n - 1, min(n, k)).round().astype(int))


def _usable(frame: pd.DataFrame, feature_cols: list[str], ts_col: str) -> pd.DataFrame:
    """Rows whose features are all finite, in time order."""
    X = frame[feature_cols].to_numpy(dtype=float, na_value=np.nan)
    rows = frame.loc[np.isfinite(X).all(axis=1)]
    return rows.sort_values(ts_col, kind="mergesort").reset_index(drop=True)


def _impute(frame: pd.DataFrame, feature_cols: list[str], center: np.ndarray) -> np.ndarray:
    X = frame[feature_cols].to_numpy(dtype=float, na_value=np.nan)
    return np.where(np.isfinite(X), X, center)


def _medians(rows: pd.DataFrame, metrics: list[str]) -> dict[str, float]:
    return {m: float(rows[m].median()) if len(rows) else float("nan") for m in metrics}


def _error_stats(ae: AutoencoderDetector, train: np.ndarray, feature_metric: list[str]) -> tuple[dict[str, float], dict[str, float]]:
    """Median and IQR (floored) of each metric's training reconstruction error."""
    errors = metric_errors(ae.feature_errors(train), feature_metric)
    q25, median, q75 = (errors.quantile(q, axis=0) for q in (0.25, 0.5, 0.75))
    iqr = q75 - q25
    # A metric reconstructed almost perfectly in training (a constant one) would turn any later
    # error into a huge z-score; no metric's scale goes below the typical metric's IQR.
    floor = max(float(iqr.median()), ERROR_FLOOR)
    center = {m: float(v) for m, v in median.items()}
    scale = {m: max(float(iqr[m]), floor) for m in errors.columns}
    return center, scale


def _fingerprint(rows: pd.DataFrame, feature_cols: list[str], ts_col: str) -> str:
    """Hash of the rows a model was fitted on (timestamps and features)."""
    hashed = pd.util.hash_pandas_object(rows[[ts_col, *feature_cols]], index=False).to_numpy()
    return hashlib.sha256(hashed.tobytes()).hexdigest()[:16]


def _check_columns(frame, feature_cols, feature_metric, metrics, entity_col, ts_col) -> None:
    if len(feature_cols) != len(feature_metric):
        raise ValueError(f"{len(feature_cols)} feature columns but {len(feature_metric)} feature metrics")
    missing = [c for c in dict.fromkeys([entity_col, ts_col, *feature_cols, *metrics]) if c not in frame.columns]
    if missing:
        raise ValueError(f"training frame lacks columns {missing}")


def _prefixed(prefix: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {f"{prefix}__{k}": v for k, v in arrays.items()}


def _unprefixed(prefix: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    head = f"{prefix}__"
    return {k[len(head) :]: v for k, v in arrays.items() if k.startswith(head)}
