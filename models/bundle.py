"""The model bundle: every entity's models for one training window.

A registered MLflow model version is one bundle, however many entities it holds. Its models live
in the model store (``models.model_store``): part files written by the training tasks, and a
``manifest.json`` that says what the bundle is and, for every entity, which part and entry hold
its model, with the model's checksum, scope, threshold and training rows. The manifest logged to
MLflow names the store location. A Spark worker reads only the entities it scores, each once per
process (:func:`load_cached`); the driver never loads them all.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import zipfile
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache

import pandas as pd

from fleetwatch.core.errors import CorruptModel
from models import model_store
from models.entity_model import EntityModel, score_entity
from models.normal_range import NormalRangeDetector
from models.params import FeatureLayout, ModelParams

BUNDLE_FORMAT = 2
SCORE_COLUMNS = ["entity_id", "ts", "iforest_score", "ae_score", "score", "raw_score", "threshold", "raw_threshold",
                 "flagged", "scope"]
PROFILES_KEPT = 4096  # metric profiles a scoring process keeps: a few KB each
INFO_COLUMNS = ["scope", "n_rows", "threshold", "fingerprint", "file", "entry", "sha256", "bytes"]


class _LazyEntities(Mapping):
    """Entity models read from the store's parts on first access; the ``keep`` most recently used
    are kept, so a scoring process's memory does not grow with the fleet (a fitted entity holds
    tens of MB of tree nodes). Models replaced in memory (feedback thresholds) stay pinned."""

    def __init__(self, reader: model_store.PartReader, info: dict[str, dict], keep: int):
        if keep < 1:
            raise ValueError(f"a bundle must keep at least one loaded model, got keep={keep}")
        self._reader = reader
        self._info = info
        self._keep = keep
        self._loaded: OrderedDict[str, EntityModel] = OrderedDict()
        self._pinned: dict[str, EntityModel] = {}
        self._profiles: OrderedDict[str, NormalRangeDetector | None] = OrderedDict()

    def __getitem__(self, entity: str) -> EntityModel:
        if entity in self._pinned:
            return self._pinned[entity]
        if entity in self._loaded:
            self._loaded.move_to_end(entity)
            return self._loaded[entity]
        info = self._info[entity]
        model = self._reader.read(entity, info)
        if info["threshold"] != model.threshold and info["threshold"] == info["threshold"]:
            model = dataclasses.replace(model, threshold=info["threshold"])  # raised by feedback
        if info.get("raw_threshold") is not None and info["raw_threshold"] != model.raw_threshold:
            model = dataclasses.replace(model, raw_threshold=float(info["raw_threshold"]))  # raised by feedback
        self._loaded[entity] = model
        if len(self._loaded) > self._keep:
            self._loaded.popitem(last=False)
        return model

    def profile(self, entity: str) -> NormalRangeDetector | None:
        """The entity's metric profile: from its model when that is in memory, else read alone
        (its detectors not decoded) and kept among the ``PROFILES_KEPT`` most recent."""
        model = self._pinned.get(entity) or self._loaded.get(entity)
        if model is not None:
            return model.profile
        if entity in self._profiles:
            self._profiles.move_to_end(entity)
            return self._profiles[entity]
        profile = self._profiles[entity] = self._reader.read_profile(entity, self._info[entity])
        if len(self._profiles) > PROFILES_KEPT:
            self._profiles.popitem(last=False)
        return profile

    def __contains__(self, entity: object) -> bool:
        return entity in self._info  # without reading the model, as Mapping's default would

    def __iter__(self) -> Iterator[str]:
        return iter(self._info)

    def __len__(self) -> int:
        return len(self._info)

    def loaded(self) -> int:
        """How many models are held in memory now."""
        return len(self._loaded) + len(self._pinned)

    def replace(self, entity: str, model: EntityModel) -> None:
        self._loaded.pop(entity, None)
        self._pinned[entity] = model


@dataclass
class ModelBundle:
    """All entities' models of one dataset and training window, and the fleet model."""

    dataset: str
    feature_view: str
    feature_cols: list[str]
    feature_metric: list[str]
    metrics: list[str]
    entities: Mapping[str, EntityModel]
    fleet: EntityModel
    window_start: dt.date
    window_end: dt.date
    params: ModelParams
    created_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    info: dict[str, dict] = field(default_factory=dict, repr=False)
    location: str | None = None

    def __post_init__(self) -> None:
        if not self.info:
            self.info = {e: _info_of(m) for e, m in self.entities.items()}

    @property
    def scopes(self) -> dict[str, str]:
        return {e: i["scope"] for e, i in self.info.items()}

    def entity_info(self) -> pd.DataFrame:
        """One row per entity from the manifest (no model is loaded): scope, training rows, threshold."""
        rows = [{"entity_id": e, "scope": i["scope"], "train_rows": int(i["n_rows"]), "threshold": float(i["threshold"])}
                for e, i in sorted(self.info.items())]
        return pd.DataFrame(rows, columns=["entity_id", "scope", "train_rows", "threshold"])

    def set_threshold(self, entity: str, threshold: float, raw_threshold: float | None = None) -> None:
        """Replace an entity's threshold, and its unsmoothed one when given (feedback from false
        alerts); :meth:`save_manifest` keeps them."""
        model = dataclasses.replace(self.entities[entity], threshold=threshold)
        info = {**self.info[entity], "threshold": float(threshold)}
        if raw_threshold is not None:
            model = dataclasses.replace(model, raw_threshold=float(raw_threshold))
            info["raw_threshold"] = float(raw_threshold)
        if isinstance(self.entities, _LazyEntities):
            self.entities.replace(entity, model)
        else:
            self.entities[entity] = model
        self.info[entity] = info

    @property
    def layout(self) -> FeatureLayout:
        return FeatureLayout(tuple(self.feature_cols), tuple(self.feature_metric), tuple(self.metrics))

    def scope_of(self, entity: str) -> str:
        """``entity`` when the entity has its own models, else ``fleet`` (short history or new)."""
        info = self.info.get(entity)
        return "entity" if info is not None and info["scope"] == "entity" else "fleet"

    def profile_of(self, entity: str) -> NormalRangeDetector | None:
        """The metric profile (baselines, spreads, normal ranges) that explains the entity's
        incidents: its own, or the fleet's for an entity the bundle does not know. Read without
        decoding the entity's detectors when its model is not in memory: explaining a night's
        incidents does not load the models a second time."""
        if entity in self.entities:
            entities = self.entities
            return entities.profile(entity) if isinstance(entities, _LazyEntities) else entities[entity].profile
        return (self._model_for(entity) or self.fleet).profile

    def baselines_of(self, entity: str) -> dict[str, float]:
        """Training median of each metric: the entity's own, or the fleet's for a new entity."""
        profile = self.profile_of(entity)
        return profile.baselines if profile is not None else {}

    def spreads_of(self, entity: str) -> dict[str, float]:
        """Training spread of each metric (``models.explain.spreads``), like :meth:`baselines_of`."""
        profile = self.profile_of(entity)
        return profile.spreads if profile is not None else {}

    def normal_ranges_of(self, entity: str) -> dict[str, list[float]]:
        """Normal training range of each metric (``models.explain.normal_ranges``), like
        :meth:`baselines_of`."""
        profile = self.profile_of(entity)
        return profile.ranges if profile is not None else {}

    def params_dict(self) -> dict:
        return self.params.model_dump()

    def fingerprint(self) -> str:
        """Hash of the training rows of every model in the bundle."""
        parts = [f"{e}:{self.info[e]['fingerprint']}" for e in sorted(self.info)] + [self.fleet.fingerprint]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]

    @property
    def score_columns(self) -> list[str]:
        """Columns of :meth:`score`'s output, in order."""
        return SCORE_COLUMNS + [f"err__{m}" for m in self.metrics]

    def score(self, frame: pd.DataFrame, *, entity_col: str = "entity_id", ts_col: str = "ts") -> pd.DataFrame:
        """Scores of feature rows (any entities), row for row in the frame's order.

        Each entity is scored by :func:`models.entity_model.score_entity` with its own model, or
        with the fleet model when it has little history or is unknown to the bundle.
        """
        if frame.empty:
            return pd.DataFrame(columns=self.score_columns)
        parts = []
        for entity, positions in frame.groupby(entity_col, sort=False).indices.items():
            out = self.score_one(str(entity), frame.iloc[positions], entity_col=entity_col, ts_col=ts_col)
            out.index = positions
            parts.append(out)
        return pd.concat(parts).sort_index().reset_index(drop=True)

    def score_one(self, entity: str, frame: pd.DataFrame, *, entity_col: str = "entity_id", ts_col: str = "ts") -> pd.DataFrame:
        """:meth:`score` of one entity's rows, without grouping the frame by entity: what a scoring
        task, which holds one entity's rows at a time, calls."""
        out = score_entity(self._model_for(entity), frame, self.layout, self.fleet, entity_col=entity_col, ts_col=ts_col)
        return out[self.score_columns]

    def save(self, location) -> str:
        """Write every model into the store at ``location`` (new or empty) as one part, then the
        manifest; what a Spark training job writes task by task, for a bundle fitted in-process."""
        location = str(location)
        if model_store.exists(f"{location}/{model_store.MANIFEST}"):
            raise FileExistsError(f"bundle folder {location} is not empty; save a bundle into a new folder")
        rows = model_store.write_part(location, "all", [self.entities[e] for e in sorted(self.entities)])
        [fleet] = model_store.write_part(location, "fleet", [self.fleet])
        self.info = {r["entity"]: {k: r[k] for k in INFO_COLUMNS} for r in rows}
        self.location = str(location)
        self.save_manifest(fleet)
        return str(location)

    def save_manifest(self, fleet: dict | None = None) -> None:
        """(Re)write the manifest at the bundle's location: after the parts, and after feedback
        raised thresholds."""
        if self.location is None:
            raise ValueError("the bundle has no store location: save it first")
        previous = getattr(self, "_manifest_fleet", None) if fleet is None else fleet
        manifest = {
            "format": BUNDLE_FORMAT,
            "location": self.location,
            "dataset": self.dataset,
            "feature_view": self.feature_view,
            "feature_cols": self.feature_cols,
            "feature_metric": self.feature_metric,
            "metrics": self.metrics,
            "window_start": _day(self.window_start).isoformat(),
            "window_end": _day(self.window_end).isoformat(),
            "params": self.params.model_dump(mode="json"),
            "created_at": self.created_at.isoformat(),
            "entities": self.info,
            "fleet": previous,
        }
        model_store.write_manifest(self.location, manifest)
        self._manifest_fleet = previous

    @classmethod
    def assemble(cls, location: str, manifest: dict) -> ModelBundle:
        """The bundle whose parts a training job wrote at ``location``: writes its manifest."""
        model_store.write_manifest(location, {"format": BUNDLE_FORMAT, "location": location, **manifest})
        return cls.load(location)

    @classmethod
    def load(cls, directory: str, entities: set[str] | None = None, keep_models: int = 8) -> ModelBundle:
        """The bundle whose manifest is in ``directory`` (a store location, or the copy MLflow
        keeps, which names the location); only ``entities`` (all when None) are readable, each
        read on first use and the ``keep_models`` most recently used kept in memory. Entities
        outside the set can still be asked for their scope."""
        directory = str(directory)
        if not model_store.exists(f"{directory}/{model_store.MANIFEST}"):
            raise FileNotFoundError(f"no model bundle at {directory} ({model_store.MANIFEST} missing)")
        manifest = model_store.read_manifest(directory)
        if manifest.get("format") != BUNDLE_FORMAT:
            raise ValueError(
                f"model bundle {directory} has format {manifest.get('format')}, expected {BUNDLE_FORMAT}: "
                "retrain the dataset (`fleetwatch train`) to rebuild it"
            )
        location = manifest.get("location") or directory
        reader = model_store.PartReader(location)
        known = {e: {**i, "threshold": _threshold(i["threshold"])} for e, i in manifest["entities"].items()}
        chosen = known if entities is None else {e: known[e] for e in entities if e in known}
        bundle = cls(
            dataset=manifest["dataset"],
            feature_view=manifest["feature_view"],
            feature_cols=manifest["feature_cols"],
            feature_metric=manifest["feature_metric"],
            metrics=manifest["metrics"],
            entities=_LazyEntities(reader, chosen, keep_models),
            fleet=reader.read("__fleet__", manifest["fleet"]),
            window_start=dt.date.fromisoformat(manifest["window_start"]),
            window_end=dt.date.fromisoformat(manifest["window_end"]),
            params=ModelParams.model_validate(manifest["params"]),
            created_at=dt.datetime.fromisoformat(manifest["created_at"]),
            info=known,
            location=location,
        )
        bundle._manifest_fleet = manifest["fleet"]
        return bundle

    def verify(self, version: str = "") -> ModelBundle:
        """Check that every part file the manifest names is there and holds each of its entries
        whole (sizes from the zip directory, read without the models); raises ``CorruptModel``
        naming the version and the file. Checksums are checked as each model is read."""
        what = f"{self.dataset} model {version or self.location}"
        expected: dict[str, dict[str, int]] = {}
        for info in [*self.info.values(), getattr(self, "_manifest_fleet", None) or {}]:
            if info.get("file"):
                expected.setdefault(info["file"], {})[info["entry"]] = info["bytes"]
        for file, entries in sorted(expected.items()):
            path = f"{self.location}/{file}"
            try:
                fs, inner = model_store.filesystem(path)
                with fs.open_input_file(inner) as handle, zipfile.ZipFile(handle) as part:
                    sizes = {i.filename: i.file_size for i in part.infolist()}
            except (OSError, zipfile.BadZipFile) as exc:
                raise CorruptModel(f"{what}: {path} is missing or unreadable ({exc}); retrain or roll back") from None
            wrong = [e for e, n in entries.items() if sizes.get(e) != n]
            if wrong:
                raise CorruptModel(f"{what}: {path} lacks or truncates {len(wrong)} models ({wrong[0]}...); retrain or roll back")
        return self

    def _model_for(self, entity: str) -> EntityModel | None:
        if entity in self.entities:
            return self.entities[entity]
        if entity in self.info:
            raise KeyError(f"entity {entity!r} is in bundle {self.dataset} but was not loaded (pass it to load(entities=...))")
        return None


def load_cached(directory: str) -> ModelBundle:
    """The bundle in ``directory``, loaded once per process (again only if its manifest changed)."""
    directory = str(directory)
    fs, path = model_store.filesystem(f"{directory}/{model_store.MANIFEST}")
    stat = fs.get_file_info(path)
    if stat.type == model_store.pafs.FileType.NotFound:
        return ModelBundle.load(directory)  # raises, naming the folder
    return _load(directory, stat.mtime_ns or 0, stat.size or 0)


@lru_cache(maxsize=4)
def _load(path: str, mtime_ns: int, size: int) -> ModelBundle:
    return ModelBundle.load(path)


def open_checked(directory: str, what: str) -> ModelBundle:
    """:func:`load_cached` and :meth:`ModelBundle.verify`, with any failure as one ``CorruptModel``
    line naming ``what`` (the model version) and the file."""
    try:
        return load_cached(directory).verify(what)
    except CorruptModel:
        raise
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise CorruptModel(f"{what} at {directory} cannot be loaded: {exc}; retrain or roll back") from None


def _threshold(value) -> float:
    return float("nan") if value is None else float(value)


def _info_of(model: EntityModel) -> dict:
    return {"scope": model.scope, "n_rows": int(model.n_train_rows), "threshold": float(model.threshold),
            "fingerprint": model.fingerprint}


def _day(value) -> dt.date:
    return pd.Timestamp(value).date()
