"""One entity's fitted models, how they score its rows, and their archive without pickle.

An entity of scope ``entity`` has its own scaler, ensemble (``models.ensemble``), threshold and
error norms. One of scope ``fleet`` (too little history) has only its own scaler, profile
(medians, spreads and normal ranges of its metrics, for explanations) and drift reference; it
borrows the fleet model's ensemble and threshold (the fleet model's own entry is ``__fleet__``).
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
import safetensors.numpy

from models.calibration import TailCalibrator
from models.drift import DriftReference
from models.ensemble import KINDS, EnsembleDetector, Member
from models.explain import metric_errors
from models.normal_range import NormalRangeDetector
from models.params import FeatureLayout
from models.scaling import RobustClipScaler

FLEET = "__fleet__"
ARCHIVE_FORMAT = 5
_READ_FORMATS = (3, 4, 5)
_ARRAYS = "arrays.safetensors"  # format 4: deflated by the zip
_ARRAYS_ZSTD = "arrays.safetensors.zst"  # format 5: zstd, stored in the zip
ZSTD_LEVEL = 3  # smaller than the zip's deflate, and decoded about 3 times as fast (benchmarks/README.md)
_FILE_SUFFIX = {"iforest": "npz", "autoencoder": "pt"}  # format 3: one file per fitted detector


@dataclass
class TrainingInfo:
    """What a model was fitted on: row count, time window and a hash of the rows."""

    n_rows: int
    window: tuple[pd.Timestamp, pd.Timestamp] | None
    fingerprint: str = ""


@dataclass
class EntityModel:
    """Everything that scores one entity (scope ``entity``), or only its scaler and profile
    (scope ``fleet``)."""

    entity: str
    scope: Literal["entity", "fleet"]
    scaler: RobustClipScaler | None
    profile: NormalRangeDetector | None
    drift: DriftReference | None
    trained: TrainingInfo
    ensemble: EnsembleDetector | None = None
    threshold: float = float("nan")
    raw_threshold: float = float("nan")
    error_center: dict[str, float] = field(default_factory=dict)
    error_norm: dict[str, float] = field(default_factory=dict)

    @property
    def baselines(self) -> dict[str, float]:
        """Training median of each metric."""
        return self.profile.baselines if self.profile is not None else {}

    @property
    def spreads(self) -> dict[str, float]:
        """Training spread of each metric (``models.explain.spreads``)."""
        return self.profile.spreads if self.profile is not None else {}

    @property
    def normal_ranges(self) -> dict[str, list[float]]:
        """Normal range of each metric (``models.explain.normal_ranges``)."""
        return self.profile.ranges if self.profile is not None else {}

    @property
    def n_train_rows(self) -> int:
        return self.trained.n_rows

    @property
    def fingerprint(self) -> str:
        return self.trained.fingerprint

    def to_bytes(self) -> bytes:
        """One zip archive: ``manifest.json`` and ``arrays.safetensors.zst``, every array of the
        model (scaler, drift reference, calibrators, and each fitted detector's ``state_arrays``:
        forest nodes, network weights) in one safetensors buffer, compressed with zstd.

        Nothing in it is a pickle, and one buffer decodes every array at once: loading a model is
        most of what a scoring task spends beyond the scoring itself, and zstd decodes about three
        times as fast as the zip's own deflate, in fewer bytes.
        """
        arrays: dict[str, np.ndarray] = {}
        manifest = {
            "format": ARCHIVE_FORMAT,
            "entity": self.entity,
            "scope": self.scope,
            "threshold": None if np.isnan(self.threshold) else float(self.threshold),
            "raw_threshold": None if np.isnan(self.raw_threshold) else float(self.raw_threshold),
            "error_norm": self.error_norm,
            "error_center": self.error_center,
            "n_train_rows": int(self.trained.n_rows),
            "fingerprint": self.trained.fingerprint,
            "window": None if self.trained.window is None else [pd.Timestamp(t).isoformat() for t in self.trained.window],
            "profile": None if self.profile is None else self.profile.to_state(),
        }
        if self.scaler is not None:
            manifest["scaler"] = self.scaler.get_params()
            arrays.update(_prefixed("scaler", self.scaler.state_arrays()))
        if self.drift is not None:
            manifest["drift"] = self.drift.get_params()
            arrays.update(_prefixed("drift", self.drift.state_arrays()))
        if self.ensemble is not None:
            ens = self.ensemble
            manifest["ensemble"] = {"combine": ens.combine, "smooth_points": int(ens.smooth_points), "members": []}
            for m in ens.members:
                member = {"name": m.name, "kind": m.kind, "columns": m.columns.tolist(), "weight": float(m.weight),
                          "calibrator": m.calibrator.get_params()}
                arrays.update(_prefixed(f"cal_{m.name}", m.calibrator.state_arrays()))
                if m.kind != "range":  # the range member is the profile
                    member["params"] = m.detector.get_params()
                    arrays.update(_prefixed(f"member_{m.name}", m.detector.state_arrays()))
                manifest["ensemble"]["members"].append(member)
        # safetensors holds numbers only: text arrays (the drift reference's columns) go in the manifest
        manifest["text_arrays"] = {k: v.tolist() for k, v in arrays.items() if v.dtype.kind == "U"}
        numbers = {k: np.ascontiguousarray(v) for k, v in arrays.items() if k not in manifest["text_arrays"]}
        raw = safetensors.numpy.save(numbers)
        manifest["arrays_bytes"] = len(raw)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
            archive.writestr("manifest.json", json.dumps(manifest, sort_keys=True), compress_type=zipfile.ZIP_DEFLATED)
            archive.writestr(_ARRAYS_ZSTD, _zstd().compress(raw, asbytes=True))
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> EntityModel:
        """The model written by :meth:`to_bytes` (or by the previous format, one file per detector)."""
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            manifest = _manifest(archive)
            if manifest["format"] in (4, 5):
                arrays = safetensors.numpy.load(_arrays_buffer(archive, manifest))
                arrays.update({k: np.array(v, dtype=str) for k, v in manifest["text_arrays"].items()})
                parts = _by_prefix(arrays)
                detectors = {
                    m["name"]: KINDS[m["kind"]].from_state_arrays(m["params"], _unprefixed(f"member_{m['name']}", parts))
                    for m in manifest.get("ensemble", {}).get("members", []) if m["kind"] != "range"
                }
            else:
                with np.load(io.BytesIO(archive.read("arrays.npz")), allow_pickle=False) as npz:
                    parts = _by_prefix({k: npz[k] for k in npz.files})
                detectors = {
                    m["name"]: KINDS[m["kind"]].from_bytes(archive.read(f"members/{m['name']}.{_FILE_SUFFIX[m['kind']]}"))
                    for m in manifest.get("ensemble", {}).get("members", []) if m["kind"] != "range"
                }
        profile = _profile(manifest)
        ensemble = None
        if "ensemble" in manifest:
            members = []
            for m in manifest["ensemble"]["members"]:
                calibrator = TailCalibrator.from_state_arrays(m["calibrator"], _unprefixed(f"cal_{m['name']}", parts))
                detector = profile if m["kind"] == "range" else detectors[m["name"]]
                columns = np.asarray(m["columns"], dtype=int)
                members.append(Member(m["name"], m["kind"], detector, columns, m["weight"], calibrator))
            spec = manifest["ensemble"]
            ensemble = EnsembleDetector(members=members, combine=spec["combine"], smooth_points=spec["smooth_points"])
            ensemble.members_ = members
        window = manifest["window"]
        return cls(
            entity=manifest["entity"],
            scope=manifest["scope"],
            scaler=RobustClipScaler.from_state_arrays(manifest["scaler"], _unprefixed("scaler", parts))
            if "scaler" in manifest
            else None,
            profile=profile,
            drift=DriftReference.from_state_arrays(manifest["drift"], _unprefixed("drift", parts))
            if "drift" in manifest
            else None,
            trained=TrainingInfo(
                manifest["n_train_rows"],
                None if window is None else (pd.Timestamp(window[0]), pd.Timestamp(window[1])),
                manifest["fingerprint"],
            ),
            ensemble=ensemble,
            threshold=float("nan") if manifest["threshold"] is None else manifest["threshold"],
            raw_threshold=float("nan") if manifest.get("raw_threshold") is None else manifest["raw_threshold"],
            error_center=manifest["error_center"],
            error_norm=manifest["error_norm"],
        )

    @staticmethod
    def profile_from_bytes(data: bytes) -> NormalRangeDetector | None:
        """Only the metric profile of an archive :meth:`to_bytes` wrote: its manifest is read, its
        detectors are not decoded (about a tenth of the cost of :meth:`from_bytes`)."""
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return _profile(_manifest(archive))


def _manifest(archive: zipfile.ZipFile) -> dict:
    manifest = json.loads(archive.read("manifest.json"))
    if manifest.get("format") not in _READ_FORMATS:
        raise ValueError(
            f"entity model archive has format {manifest.get('format')}, expected {ARCHIVE_FORMAT} (or 3 or 4): "
            "retrain the dataset (`fleetwatch train`) to rebuild its models"
        )
    return manifest


def _zstd():
    import pyarrow as pa  # lazy: only archives need it

    return pa.Codec("zstd", compression_level=ZSTD_LEVEL)


def _arrays_buffer(archive: zipfile.ZipFile, manifest: dict) -> bytes:
    """The safetensors buffer of a format-4 (deflated by the zip) or format-5 (zstd) archive."""
    if manifest["format"] == 4:
        return archive.read(_ARRAYS)
    return _zstd().decompress(archive.read(_ARRAYS_ZSTD), decompressed_size=manifest["arrays_bytes"], asbytes=True)


def _profile(manifest: dict) -> NormalRangeDetector | None:
    return None if manifest["profile"] is None else NormalRangeDetector.from_state(manifest["profile"])


def impute(frame: pd.DataFrame, feature_cols, center: np.ndarray) -> np.ndarray:
    """Raw features with missing values replaced by ``center`` (the entity's medians)."""
    X = frame[list(feature_cols)].to_numpy(dtype=float, na_value=np.nan)
    return np.where(np.isfinite(X), X, center)


def score_entity(
    model: EntityModel | None,
    frame: pd.DataFrame,
    layout: FeatureLayout,
    fleet: EntityModel | None,
    *,
    entity_col: str = "entity_id",
    ts_col: str = "ts",
) -> pd.DataFrame:
    """Calibrated scores of one entity's rows, in the frame's row order.

    ``model`` of scope ``entity`` scores with its own ensemble; scope ``fleet`` uses its own
    scaler with the ``fleet`` model's ensemble and threshold; ``None`` (an entity the bundle does
    not know) is scaled by robust statistics of ``frame`` itself and scored by the fleet model.
    Missing feature values count as the entity's median. The normal-range member measures each
    metric against the scorer's ranges (the fleet's pooled ones for an entity the fleet scores).

    Returns
    -------
    DataFrame
        ``entity_id``, ``ts``, ``iforest_score``, ``ae_score`` (the mean calibrated score of each
        kind's members), ``score`` (the ensemble's), ``raw_score`` (the same of the unsmoothed
        detector scores, for the short-event rule of ``models.incidents``), ``threshold``,
        ``raw_threshold`` (the unsmoothed score held-out rows reached about once a day; NaN in a
        model saved before it was kept),
        ``flagged`` (score above threshold), ``scope`` and one ``err__<metric>`` column per metric (the autoencoder's
        normalised reconstruction error: robust z-scores against its training errors).
    """
    own = model is not None and model.scope == "entity"
    scorer = model if own else fleet
    if scorer is None or scorer.ensemble is None:
        raise ValueError("score_entity: an entity without its own model needs the fleet model")
    if model is not None and model.scaler is not None:
        scaler = model.scaler
    else:
        finite = layout.features(frame)
        finite = finite[np.isfinite(finite).all(axis=1)]
        if len(finite) == 0:
            raise ValueError(f"score_entity: no row of entity {frame[entity_col].iloc[0]!r} has all features finite")
        scaler = RobustClipScaler().fit(finite)
    Z = scaler.transform(impute(frame, layout.feature_cols, scaler.center_))
    order = np.argsort(frame[ts_col].values, kind="stable")  # zoned: its UTC instants (no Timestamp per row); NaT last
    X = np.hstack([Z, layout.values(frame)])[order]
    ensemble = scorer.ensemble
    calibrated, unsmoothed = ensemble.two_scale_scores(X)
    back = np.empty_like(order)
    back[order] = np.arange(order.size)
    score = ensemble.combined(calibrated)[back]
    errors = metric_errors(
        ensemble.member("autoencoder").detector.feature_errors(Z[order]),
        list(layout.feature_metric),
        scorer.error_norm,
        scorer.error_center or None,
    )
    names, errors = list(errors.columns), errors.to_numpy()[back]
    out = pd.DataFrame(
        {
            "entity_id": frame[entity_col].astype(str).to_numpy(),
            "ts": frame[ts_col].array,
            "iforest_score": ensemble.kind_scores(calibrated, "iforest")[back],
            "ae_score": ensemble.kind_scores(calibrated, "autoencoder")[back],
            "score": score,
            "raw_score": ensemble.combined(unsmoothed)[back],
            "threshold": scorer.threshold,
            "raw_threshold": scorer.raw_threshold,
            "flagged": score > scorer.threshold,
            "scope": "entity" if own else "fleet",
            **{f"err__{metric}": errors[:, i] for i, metric in enumerate(names)},
        }
    )
    return out


def _prefixed(prefix: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {f"{prefix}__{k}": v for k, v in arrays.items()}


def _unprefixed(prefix: str, parts: dict[str, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The arrays :func:`_prefixed` saved under ``prefix``, from :func:`_by_prefix`'s ``parts``."""
    return parts.get(prefix, {})


def _by_prefix(arrays: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """An archive's arrays grouped by the prefix :func:`_prefixed` gave them, in one pass:
    scanning every array for each part of the model cost about 0.45 ms an entity. The prefix ends
    at the last ``__``: array names have none, member names may."""
    parts: dict[str, dict[str, np.ndarray]] = {}
    for key, value in arrays.items():
        prefix, sep, name = key.rpartition("__")
        if sep:
            parts.setdefault(prefix, {})[name] = value
    return parts
