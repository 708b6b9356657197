"""The model store: where a bundle's entity models are written by the tasks that fit them.

A bundle under construction has a location of its own, ``<lake>/models/<dataset>/<build>``
(a local path or any URI pyarrow opens, such as ``s3://``). Each training task writes the models
of its bucket of entities as one part file there and returns only small metadata rows, so no
model ever passes through the driver; the driver then writes the manifest, which names the part
and entry of every entity with its checksum. A part is a zip of entity archives
(``models.entity_model``), stored uncompressed (each archive is compressed already), so a scoring
task reads only the entries of the entities it scores.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import uuid
import zipfile
from urllib.parse import quote

import pyarrow.fs as pafs

from fleetwatch.core.lake import arrow_filesystem as filesystem
from fleetwatch.core.lake import read_bytes, write_bytes
from models.entity_model import EntityModel
from models.normal_range import NormalRangeDetector

MANIFEST = "manifest.json"
PARTS = "parts"


def new_build(root: str, dataset: str) -> str:
    """A fresh location for a bundle of ``dataset`` under the store ``root``."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    return f"{str(root).rstrip('/')}/{dataset}/{stamp}-{uuid.uuid4().hex[:8]}"


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def entry_name(entity: str) -> str:
    return f"{quote(entity, safe='')}.zip"


def write_part(location: str, name: str, models: list[EntityModel]) -> list[dict]:
    """Write ``models`` as the part ``name`` of the bundle at ``location``; returns one metadata
    row per model: ``entity``, ``scope``, ``n_rows``, ``threshold``, ``fingerprint`` (of its
    training rows), ``file``, ``entry``, ``sha256`` and ``bytes`` of its archive."""
    rows = []
    buffer = io.BytesIO()
    file = f"{PARTS}/{name}.zip"
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as part:
        for model in models:
            data = model.to_bytes()
            entry = entry_name(model.entity)
            part.writestr(entry, data)
            rows.append(
                {
                    "entity": model.entity,
                    "scope": model.scope,
                    "n_rows": int(model.n_train_rows),
                    "threshold": float(model.threshold),
                    "fingerprint": model.fingerprint,
                    "file": file,
                    "entry": entry,
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "bytes": len(data),
                }
            )
    write_bytes(f"{location}/{file}", buffer.getvalue())
    return rows


class PartReader:
    """Entity archives read from a bundle's parts, each part opened once and kept open."""

    def __init__(self, location: str):
        self.location = location
        self._open: dict[str, zipfile.ZipFile] = {}

    def read(self, entity: str, info: dict) -> EntityModel:
        """The model of ``entity`` (its manifest entry ``info``), checked against its checksum."""
        return EntityModel.from_bytes(self._checked(entity, info))

    def read_profile(self, entity: str, info: dict) -> NormalRangeDetector | None:
        """Only the metric profile of ``entity`` (baselines, spreads, normal ranges), checked
        against its checksum: what explaining an incident needs, without decoding its detectors."""
        return EntityModel.profile_from_bytes(self._checked(entity, info))

    def _checked(self, entity: str, info: dict) -> bytes:
        part = self._open.get(info["file"])
        if part is None:
            fs, path = filesystem(f"{self.location}/{info['file']}")
            part = self._open[info["file"]] = zipfile.ZipFile(fs.open_input_file(path))
        data = part.read(info["entry"])
        if hashlib.sha256(data).hexdigest() != info["sha256"]:
            raise ValueError(f"model of entity {entity!r} in {self.location}/{info['file']} does not match its checksum")
        return data


def write_manifest(location: str, manifest: dict) -> None:
    write_bytes(f"{location}/{MANIFEST}", json.dumps(manifest, indent=1, sort_keys=True).encode())


def read_manifest(location: str) -> dict:
    return json.loads(read_bytes(f"{location}/{MANIFEST}"))
