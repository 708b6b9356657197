"""The model bundle: every entity's models for one training window, saved as one folder.

A registered MLflow model version is one bundle, however many entities it holds. The folder is
``manifest.json`` (what the bundle is and which file holds which entity), ``fleet.zip`` and one
``entities/<escaped id>.zip`` per entity, so a Spark worker loads only the entities it scores,
each once per process (:func:`load_cached`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from urllib.parse import quote

import pandas as pd

from models.entity_model import EntityModel, score_entity
from models.params import FeatureLayout, ModelParams

MANIFEST = "manifest.json"
FLEET_FILE = "fleet.zip"
BUNDLE_FORMAT = 1
SCORE_COLUMNS = ["entity_id", "ts", "iforest_score", "ae_score", "score", "threshold", "flagged", "scope"]


class _LazyEntities(Mapping):
    """Entity models read from a bundle folder on first access, then kept."""

    def __init__(self, root: Path, files: dict[str, str]):
        self._root = root
        self._files = files
        self._loaded: dict[str, EntityModel] = {}

    def __getitem__(self, entity: str) -> EntityModel:
        if entity not in self._loaded:
            self._loaded[entity] = EntityModel.from_bytes((self._root / self._files[entity]).read_bytes())
        return self._loaded[entity]

    def __iter__(self) -> Iterator[str]:
        return iter(self._files)

    def __len__(self) -> int:
        return len(self._files)


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
    scopes: dict[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self.scopes:
            self.scopes = {entity: model.scope for entity, model in self.entities.items()}

    @property
    def layout(self) -> FeatureLayout:
        return FeatureLayout(tuple(self.feature_cols), tuple(self.feature_metric), tuple(self.metrics))

    def scope_of(self, entity: str) -> str:
        """``entity`` when the entity has its own models, else ``fleet`` (short history or new)."""
        return "entity" if self.scopes.get(entity) == "entity" else "fleet"

    def baselines_of(self, entity: str) -> dict[str, float]:
        """Training median of each metric: the entity's own, or the fleet's for a new entity."""
        model = self._model_for(entity)
        return (model if model is not None else self.fleet).baselines

    def spreads_of(self, entity: str) -> dict[str, float]:
        """Training spread of each metric (``models.explain.spreads``), like :meth:`baselines_of`;
        empty for models saved before spreads were kept."""
        model = self._model_for(entity)
        return (model if model is not None else self.fleet).spreads

    def normal_ranges_of(self, entity: str) -> dict[str, list[float]]:
        """Normal training range of each metric (``models.explain.normal_ranges``), like
        :meth:`spreads_of`; empty for models saved before ranges were kept."""
        model = self._model_for(entity)
        return (model if model is not None else self.fleet).normal_ranges

    def params_dict(self) -> dict:
        return self.params.model_dump()

    def fingerprint(self) -> str:
        """Hash of the training rows of every model in the bundle."""
        parts = [f"{e}:{self.entities[e].fingerprint}" for e in sorted(self.entities)] + [self.fleet.fingerprint]
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
        layout = self.layout
        for entity, positions in frame.groupby(entity_col, sort=False).indices.items():
            out = score_entity(
                self._model_for(str(entity)), frame.iloc[positions], layout, self.fleet, entity_col=entity_col, ts_col=ts_col
            )
            out.index = positions
            parts.append(out)
        return pd.concat(parts).sort_index().reset_index(drop=True)[self.score_columns]

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the bundle into ``directory`` (new or empty); the manifest goes last."""
        root = Path(directory)
        if root.exists() and any(root.iterdir()):
            raise FileExistsError(f"bundle folder {root} is not empty; save a bundle into a new folder")
        (root / "entities").mkdir(parents=True, exist_ok=True)
        files = {}
        for entity in sorted(self.entities):
            files[entity] = f"entities/{quote(entity, safe='')}.zip"
            (root / files[entity]).write_bytes(self.entities[entity].to_bytes())
        (root / FLEET_FILE).write_bytes(self.fleet.to_bytes())
        manifest = {
            "format": BUNDLE_FORMAT,
            "dataset": self.dataset,
            "feature_view": self.feature_view,
            "feature_cols": self.feature_cols,
            "feature_metric": self.feature_metric,
            "metrics": self.metrics,
            "window_start": _day(self.window_start).isoformat(),
            "window_end": _day(self.window_end).isoformat(),
            "params": self.params.model_dump(),
            "created_at": self.created_at.isoformat(),
            "entities": {e: {"scope": self.scopes[e], "file": files[e]} for e in files},
        }
        (root / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        return root

    @classmethod
    def load(cls, directory: str | os.PathLike, entities: set[str] | None = None) -> ModelBundle:
        """The bundle in ``directory``; only ``entities`` (all when None) are readable, each
        read on first use. Entities outside the set can still be asked for their scope."""
        root = Path(directory)
        path = root / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"no model bundle at {root} ({MANIFEST} missing)")
        manifest = json.loads(path.read_text())
        if manifest.get("format") != BUNDLE_FORMAT:
            raise ValueError(f"model bundle {root} has format {manifest.get('format')}, expected {BUNDLE_FORMAT}")
        known = manifest["entities"]
        chosen = known if entities is None else {e: known[e] for e in entities if e in known}
        return cls(
            dataset=manifest["dataset"],
            feature_view=manifest["feature_view"],
            feature_cols=manifest["feature_cols"],
            feature_metric=manifest["feature_metric"],
            metrics=manifest["metrics"],
            entities=_LazyEntities(root, {e: info["file"] for e, info in chosen.items()}),
            fleet=EntityModel.from_bytes((root / FLEET_FILE).read_bytes()),
            window_start=dt.date.fromisoformat(manifest["window_start"]),
            window_end=dt.date.fromisoformat(manifest["window_end"]),
            params=ModelParams.model_validate(manifest["params"]),
            created_at=dt.datetime.fromisoformat(manifest["created_at"]),
            scopes={e: info["scope"] for e, info in known.items()},
        )

    def _model_for(self, entity: str) -> EntityModel | None:
        if entity in self.entities:
            return self.entities[entity]
        if entity in self.scopes:
            raise KeyError(f"entity {entity!r} is in bundle {self.dataset} but was not loaded (pass it to load(entities=...))")
        return None


def load_cached(directory: str | os.PathLike) -> ModelBundle:
    """The bundle in ``directory``, loaded once per process (again only if its manifest changed)."""
    path = Path(directory).resolve()
    if not (path / MANIFEST).is_file():
        return ModelBundle.load(path)  # raises, naming the folder
    stat = (path / MANIFEST).stat()
    return _load(str(path), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=4)
def _load(path: str, mtime_ns: int, size: int) -> ModelBundle:
    return ModelBundle.load(path)


def _day(value) -> dt.date:
    return pd.Timestamp(value).date()
