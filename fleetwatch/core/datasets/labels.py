"""Known anomalies of a dataset, as a team keeps them: a CSV or Parquet file of ``entity_id``,
``start``, ``end`` (inclusive, UTC unless an offset is given) and optionally ``metrics``, the
metrics that caused each one (separated by ``,``, ``;`` or ``|``), which HitRate is measured on.
Every row is checked; a bad one is one error naming the file, the row, the column and the rule."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from fleetwatch.core.errors import FleetWatchError
from fleetwatch.core.specs import DatasetSpec

EVENT_COLUMNS = ["entity_id", "start_ts", "end_ts", "metrics"]
_ALIASES = {"start": ("start", "start_ts"), "end": ("end", "end_ts")}


def _column(frame: pd.DataFrame, path: Path, names: tuple[str, ...]) -> str:
    found = [n for n in names if n in frame.columns]
    if not found:
        raise FleetWatchError(
            f"labels file {path}: no column {names[0]!r} (expected entity_id, start, end and optionally metrics)"
        )
    return found[0]


def read_labels(path: Path, spec: DatasetSpec, entities: set[str] | None = None) -> pd.DataFrame:
    """The labelled events of ``path`` (entity_id, start_ts, end_ts, metrics), checked against ``spec``.

    ``entities`` are those the dataset holds: a label naming another is an error (a typo would
    otherwise count as a missed anomaly never seen).
    """
    path = Path(path)
    if not path.is_file():
        raise FleetWatchError(f"labels file {path} does not exist")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise FleetWatchError(f"labels file {path} cannot be read: {str(exc).strip().splitlines()[-1]}") from None
    first_line = 2 if path.suffix.lower() not in (".parquet", ".pq") else 1
    where = "line" if first_line == 2 else "row"
    ent = _column(frame, path, ("entity_id", spec.entity_column))
    out = pd.DataFrame({"entity_id": frame[ent].astype(str).str.strip()})
    for key, names in _ALIASES.items():
        col = _column(frame, path, names)
        parsed = pd.to_datetime(frame[col], errors="coerce", utc=True, format="ISO8601")
        bad = parsed.isna().to_numpy().nonzero()[0]
        if bad.size:
            i = bad[0]
            raise FleetWatchError(
                f"labels file {path} {where} {i + first_line}: column {col!r} value {frame[col].iloc[i]!r} is not a "
                "timestamp (ISO 8601, e.g. 2026-03-06 10:00:00)"
            )
        out[f"{key}_ts"] = parsed.astype("datetime64[ns, UTC]")
    backwards = (out["end_ts"] < out["start_ts"]).to_numpy().nonzero()[0]
    if backwards.size:
        raise FleetWatchError(f"labels file {path} {where} {backwards[0] + first_line}: end is before start")
    if entities is not None:
        unknown = (~out["entity_id"].isin(entities)).to_numpy().nonzero()[0]
        if unknown.size:
            i = unknown[0]
            raise FleetWatchError(
                f"labels file {path} {where} {i + first_line}: entity {out['entity_id'].iloc[i]!r} has no rows in dataset "
                f"{spec.name} (entities: {', '.join(sorted(entities)[:10])}{', ...' if len(entities) > 10 else ''})"
            )
    out["metrics"] = ""
    if "metrics" in frame.columns:
        known = set(spec.metric_names)
        for i, text in enumerate(frame["metrics"].fillna("").astype(str)):
            names = [m.strip() for m in re.split(r"[,;|]", text) if m.strip()]
            wrong = [m for m in names if m not in known]
            if wrong:
                raise FleetWatchError(
                    f"labels file {path} {where} {i + first_line}: metric {wrong[0]!r} is not one of the spec's "
                    f"({', '.join(spec.metric_names)})"
                )
            out.loc[i, "metrics"] = ",".join(names)
    return out[EVENT_COLUMNS]
