"""Dataset specs: one TOML file per dataset, validated when loaded.

A spec names the entity and timestamp columns, the metrics with their dtype and allowed range,
the sampling interval, the partition frequency and the alarm budget. The platform is generic
over specs; nothing downstream is hard-coded to one dataset.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fleetwatch.core.errors import SpecError

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
SPARK_TYPES = {"double": "double", "float": "float", "long": "bigint", "int": "int"}


class MetricSpec(BaseModel):
    """One metric column: its dtype, the range a valid value lies in, and how many nulls it may hold."""

    model_config = ConfigDict(extra="forbid")

    name: str
    dtype: Literal["double", "float", "long", "int"] = "double"
    min: float = -math.inf
    max: float = math.inf
    max_null_share: float = Field(
        0.0, ge=0, le=1, description="Largest share of a partition's rows whose value may be null (missing); 0: none."
    )

    @field_validator("name")
    @classmethod
    def _valid_name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"metric name {v!r} must be letters, digits and _ (not first)")
        return v

    @model_validator(mode="after")
    def _range(self) -> MetricSpec:
        if self.min > self.max:
            raise ValueError(f"metric {self.name!r}: min {self.min} is above max {self.max}")
        return self


class DatasetSpec(BaseModel):
    """The contract of one dataset's raw partitions."""

    model_config = ConfigDict(extra="forbid")

    name: str
    entity_column: str = "entity_id"
    timestamp_column: str = "ts"
    sampling_seconds: int = Field(60, gt=0)
    partition_frequency: Literal["daily"] = "daily"
    alarm_budget: float = Field(1.0, gt=0, description="Expected incidents per entity per day.")
    alarm_share_budget: float | None = Field(
        None, gt=0, le=1, description=(
            "Share of an entity's minutes that may be in alarm over the last nights; unset: derived from alarm_budget."
        ),
    )
    min_rows: int = Field(1, ge=1, description="Fewest rows a valid partition may hold.")
    score_smoothing_minutes: int = Field(
        5, ge=1, description="Minutes each detector score is averaged over: about the shortest anomaly worth an alert."
    )
    incident_gap_minutes: int | None = Field(
        None, ge=0, description="Gap tolerated inside one incident; unset: the FLEETWATCH_INCIDENT_GAP_MINUTES setting."
    )
    min_incident_minutes: int = Field(
        1, ge=1, description="Fewest flagged minutes an incident needs to be raised: shorter blips raise no alert."
    )
    short_event_factor: float | None = Field(
        None,
        gt=0,
        description="An incident shorter than min_incident_minutes still alerts when a row's unsmoothed score "
        "exceeds this many times the unsmoothed score held-out rows reached about once a day; unset: never.",
    )
    metrics: list[MetricSpec] = Field(min_length=1)
    raw_path: str | None = Field(
        None, description="Folder of the dataset's dt= raw partitions when they are read in place; unset: <lake>/raw/<name>."
    )
    entity_from: Literal["column", "file_name"] = Field(
        "column", description="Where `ingest files` finds the entity: the entity column, or each file's name."
    )

    def incident_gap(self, default: int) -> int:
        """Minutes between flagged rows that still make one incident: the spec's own, else ``default``."""
        return default if self.incident_gap_minutes is None else self.incident_gap_minutes

    def alarm_share(self, incident_minutes: float) -> float:
        """Share of an entity's minutes allowed in alarm: the spec's own, else ``alarm_budget``
        incidents a day of ``incident_minutes`` each."""
        if self.alarm_share_budget is not None:
            return self.alarm_share_budget
        return min(1.0, self.alarm_budget * incident_minutes / 1440)

    @property
    def min_incident_points(self) -> int:
        """Fewest flagged rows an incident needs: ``min_incident_minutes`` in samples, at least 1."""
        return self.min_incident_points_at(self.sampling_seconds)

    def min_incident_points_at(self, sampling_seconds: int) -> int:
        """``min_incident_minutes`` in rows of an entity that reports every ``sampling_seconds``."""
        return max(1, math.ceil(self.min_incident_minutes * 60 / sampling_seconds))

    @field_validator("name", "entity_column", "timestamp_column")
    @classmethod
    def _valid_identifier(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"{v!r} must be letters, digits and _ (not first)")
        return v

    @model_validator(mode="after")
    def _unique_columns(self) -> DatasetSpec:
        names = [m.name for m in self.metrics] + [self.entity_column, self.timestamp_column]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"column names appear twice: {', '.join(dupes)}")
        return self

    @property
    def metric_names(self) -> list[str]:
        return [m.name for m in self.metrics]

    @property
    def columns(self) -> list[str]:
        return [self.entity_column, self.timestamp_column, *self.metric_names]

    @property
    def rows_per_day(self) -> int:
        return 86_400 // self.sampling_seconds

    def to_toml(self) -> str:
        """The spec as TOML text (written by ``generate`` and ``ingest``)."""
        lines = [
            f'name = "{self.name}"',
            f'entity_column = "{self.entity_column}"',
            f'timestamp_column = "{self.timestamp_column}"',
            f"sampling_seconds = {self.sampling_seconds}",
            f'partition_frequency = "{self.partition_frequency}"',
            f"alarm_budget = {self.alarm_budget}",
            f"min_rows = {self.min_rows}",
            f"score_smoothing_minutes = {self.score_smoothing_minutes}",
        ]
        if self.incident_gap_minutes is not None:
            lines.append(f"incident_gap_minutes = {self.incident_gap_minutes}")
        if self.alarm_share_budget is not None:
            lines.append(f"alarm_share_budget = {self.alarm_share_budget}")
        if self.min_incident_minutes != 1:
            lines.append(f"min_incident_minutes = {self.min_incident_minutes}")
        if self.short_event_factor is not None:
            lines.append(f"short_event_factor = {self.short_event_factor}")
        if self.raw_path is not None:
            lines.append(f"raw_path = {json.dumps(self.raw_path)}")
        if self.entity_from != "column":
            lines.append(f'entity_from = "{self.entity_from}"')
        for m in self.metrics:
            lines += ["", "[[metrics]]", f'name = "{m.name}"', f'dtype = "{m.dtype}"']
            if math.isfinite(m.min):
                lines.append(f"min = {m.min}")
            if math.isfinite(m.max):
                lines.append(f"max = {m.max}")
            if m.max_null_share:
                lines.append(f"max_null_share = {m.max_null_share}")
        return "\n".join(lines) + "\n"


def _describe(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        parts.append(f"field '{loc}': {e['msg']}")
    return "; ".join(parts)


def load_spec_file(path: Path) -> DatasetSpec:
    """Load and validate one spec; errors name the file and the field."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"dataset spec {path} does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"dataset spec {path} is not valid TOML: {exc}") from None
    try:
        spec = DatasetSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(f"dataset spec {path}: {_describe(exc)}") from None
    if spec.name != path.stem:
        raise SpecError(f"dataset spec {path}: field 'name' is {spec.name!r}, but the file is named {path.stem!r}")
    return spec


def check_dataset_name(dataset: str) -> str:
    """``dataset`` if it is a well-formed dataset name (it becomes a folder and a file name), else ``SpecError``."""
    if not isinstance(dataset, str) or not _NAME.match(dataset):
        raise SpecError(
            f"dataset name {dataset!r} is malformed: use letters, digits and _ (a letter first), "
            "e.g. the name of a spec in the specs folder"
        )
    return dataset


def require_dataset(specs_dir: Path, dataset: str) -> str:
    """``dataset`` if its name is well formed and it has a spec; else ``SpecError`` saying which datasets exist.

    The one check every command runs on the dataset it is given, before any path is built.
    """
    check_dataset_name(dataset)
    if not spec_path(specs_dir, dataset).is_file():
        load_spec(specs_dir, dataset)  # raises, listing the known datasets
    return dataset


def spec_path(specs_dir: Path, dataset: str) -> Path:
    return Path(specs_dir) / f"{check_dataset_name(dataset)}.toml"


def load_spec(specs_dir: Path, dataset: str) -> DatasetSpec:
    """The spec of ``dataset`` from the specs folder, with an error listing what exists."""
    path = spec_path(specs_dir, dataset)
    if not path.is_file():
        known = sorted(p.stem for p in Path(specs_dir).glob("*.toml")) if Path(specs_dir).is_dir() else []
        hint = f" (known datasets: {', '.join(known)})" if known else " (run `fleetwatch generate` or `fleetwatch ingest` first)"
        raise SpecError(f"no dataset spec for {dataset!r} at {path}{hint}")
    return load_spec_file(path)


def list_specs(specs_dir: Path) -> list[str]:
    """Dataset names that have a spec file (light: lists a folder, reads nothing)."""
    d = Path(specs_dir)
    return sorted(p.stem for p in d.glob("*.toml")) if d.is_dir() else []


def write_spec(specs_dir: Path, spec: DatasetSpec) -> Path:
    path = spec_path(specs_dir, spec.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".toml.tmp")
    tmp.write_text(spec.to_toml())
    tmp.replace(path)
    return path
