"""Reading a feature partition of whole-entity files straight from Python tasks.

A partition written by ``feature_store.partition_writer`` names in ``_entities.json`` each file's
entities, in order, with their row counts. :func:`work_units` cuts it into units of whole entities
(a contiguous run of rows of one file) of about equal size, and :func:`unit_entities` reads one
unit's row groups with pyarrow and hands over its entities one frame each: a task scores them
without Spark reading the rows into the JVM and shuffling them by entity.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

import numpy as np
import pandas as pd

from fleetwatch.core.lake import arrow_filesystem, read_bytes
from fleetwatch.core.task_files import ENTITIES, FORMAT


def read_manifest(path: str) -> dict | None:
    """The ``_entities.json`` of the partition at ``path`` (features, or the night's scores);
    ``None`` when it has none (a partition Spark's own writer wrote, before the tasks wrote them)
    or one of another format."""
    try:
        manifest = json.loads(read_bytes(f"{path.rstrip('/')}/{ENTITIES}"))
    except FileNotFoundError:
        return None
    return manifest if manifest.get("format") == FORMAT else None


def work_units(manifest: dict, units: int, max_rows: int = 250_000) -> list[dict]:
    """The partition as about ``units`` units of whole entities, each at most ``max_rows`` rows
    unless one entity has more: ``file``, ``start`` and ``stop`` (rows of the file), ``entities``
    and ``entity_rows``. More units than task slots even out entities of unequal size."""
    target = max(1, min(max_rows, math.ceil(manifest["rows"] / max(1, units))))
    out = []
    for entry in manifest["files"]:
        start = 0
        unit = {"file": entry["file"], "start": 0, "entities": [], "entity_rows": []}
        for entity, rows in zip(entry["entities"], entry["entity_rows"], strict=True):
            unit["entities"].append(entity)
            unit["entity_rows"].append(rows)
            start += rows
            if start - unit["start"] >= target:
                out.append({**unit, "stop": start})
                unit = {"file": entry["file"], "start": start, "entities": [], "entity_rows": []}
        if unit["entities"]:
            out.append({**unit, "stop": start})
    return out


def unit_entities(path: str, unit: dict) -> Iterator[pd.DataFrame]:
    """The rows of each entity of ``unit`` (of the partition at ``path``), one frame an entity, in
    the file's order; timestamps naive UTC, as Spark hands them to pandas. Raises ``ValueError``
    when the file does not hold the entities the manifest names where it names them."""
    import pyarrow.parquet as pq

    fs, inner = arrow_filesystem(f"{path.rstrip('/')}/{unit['file']}")
    with fs.open_input_file(inner) as f:
        parquet = pq.ParquetFile(f)
        bounds = np.cumsum([0, *(parquet.metadata.row_group(i).num_rows for i in range(parquet.num_row_groups))])
        first = int(np.searchsorted(bounds, unit["start"], side="right")) - 1
        last = int(np.searchsorted(bounds, unit["stop"], side="left"))
        table = parquet.read_row_groups(range(first, last)).slice(unit["start"] - bounds[first], unit["stop"] - unit["start"])
    frame = table.to_pandas()
    entity, ts = table.schema.names[:2]
    frame[ts] = frame[ts].dt.tz_convert(None).astype("datetime64[ns]")
    cuts = np.cumsum([0, *unit["entity_rows"]])
    for name, begin, end in zip(unit["entities"], cuts[:-1], cuts[1:], strict=True):
        rows = frame.iloc[begin:end].reset_index(drop=True)
        if end > len(frame) or str(rows[entity].iloc[0]) != name or str(rows[entity].iloc[-1]) != name:
            raise ValueError(f"{path}/{unit['file']}: rows {unit['start'] + begin}-{unit['start'] + end} are not "
                             f"entity {name!r}'s, as {ENTITIES} says")
        yield rows
