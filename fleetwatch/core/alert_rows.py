"""A partition's rows for the alerts tables: checked against the table, known by their keys, and
written a batch at a time (``AlertsStore.publish_partition`` holds one batch of a night)."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import sqlalchemy as sa

from fleetwatch.core import alert_carry
from fleetwatch.core.alert_tables import MODEL_SCOPES, OPTIONAL_COLUMNS, SEVERITIES, alert_nights, alerts
from fleetwatch.core.errors import AlertsStoreError
from fleetwatch.core.incident_batches import KEY_COLUMNS, key_of, utc_datetimes

IN_LIST = 1000  # ids per IN (...) list and per refresh: bounded statements and memory


def chunks(values: list, size: int):
    for start in range(0, len(values), size):
        yield values[start:start + size]


def require_columns(columns: list[str], wanted: list[str], table: str, where: str) -> None:
    optional = OPTIONAL_COLUMNS.get(table, ())
    missing = [c for c in wanted if c not in columns and c not in optional]
    if missing:
        raise AlertsStoreError(f"{where}: missing columns {', '.join(missing)}; nothing was written")


def incident_keys(frame: pd.DataFrame, where: str) -> list[dict]:
    """Every incident's entity, start and end (UTC datetimes), each (entity, start) once."""
    for name in KEY_COLUMNS:
        empty = int(frame[name].isna().sum())
        if empty:
            raise AlertsStoreError(f"{where}: {empty} incident(s) without {name}; nothing was written")
    entities = [str(v) for v in frame["entity_id"]]
    starts, ends = utc_datetimes(frame["start_ts"]), utc_datetimes(frame["end_ts"])
    keys = [{"entity_id": e, "start_ts": s, "end_ts": t} for e, s, t in zip(entities, starts, ends, strict=True)]
    counts: dict[tuple, int] = {}
    for k in keys:
        counts[key_of(k)] = counts.get(key_of(k), 0) + 1
    twice = sorted((k for k, n in counts.items() if n > 1), key=lambda k: (k[0], k[1]))
    if twice:
        entity, start = twice[0]
        raise AlertsStoreError(
            f"{where}: {len(twice)} incident(s) listed more than once, the first of entity {entity} starting "
            f"{start.isoformat()}; nothing was written"
        )
    return keys


def write_batch(
    conn: sa.Connection, dataset: str, day: dt.date, rows: list[dict], known: set, carried: dict, updated: dict,
    sampling_seconds: int,
) -> None:
    """One batch of a night: matched alerts updated, new ones inserted, every incident's night
    row. Carried alerts keep what their first night wrote."""
    unknown = [key_of(r) for r in rows if key_of(r) not in known]
    if unknown:
        entity, start = unknown[0]
        raise AlertsStoreError(
            f"alerts for {dataset} {day}: the incident of entity {entity} starting {start.isoformat()} was not "
            "in the partition's first read; it changed while it was published, nothing was written"
        )
    ids: list[int | None] = [carried.get(key_of(r), updated.get(key_of(r))) for r in rows]
    changes = [{**rows[i], "_alert_id": a} for i, a in enumerate(ids) if key_of(rows[i]) in updated]
    if changes:
        conn.execute(sa.update(alerts).where(alerts.c.id == sa.bindparam("_alert_id")), changes)
    new = [i for i, a in enumerate(ids) if a is None]
    if new:
        fresh = [{**rows[i], "persistent": False, "nights": 1, "last_dt": day} for i in new]
        made = conn.execute(sa.insert(alerts).returning(alerts.c.id, sort_by_parameter_order=True), fresh)
        for i, alert_id in zip(new, made.scalars().all(), strict=True):
            ids[i] = alert_id
    parts = alert_carry.night_rows(dataset, day, rows, ids, sampling_seconds)
    if parts:
        conn.execute(sa.insert(alert_nights), parts)


def records(frame: pd.DataFrame, columns: list[str], dataset: str, day: dt.date, table: str) -> list[dict]:
    """Checked rows of ``frame`` for ``table``: columns present, partition and categories right."""
    where = f"{table} for {dataset} {day}"
    optional = OPTIONAL_COLUMNS.get(table, ())
    missing = [c for c in columns if c not in frame.columns and c not in optional]
    if missing:
        raise AlertsStoreError(f"{where}: missing columns {', '.join(missing)}; nothing was written")
    out = frame.reindex(columns=columns)
    for name in ("start_ts", "end_ts"):
        if name in out:
            out[name] = pd.to_datetime(out[name], utc=True)
    out["dt"] = pd.to_datetime(out["dt"]).dt.date
    out["entity_id"] = out["entity_id"].map(lambda v: None if pd.isna(v) else str(v))
    checks = [("dataset", (dataset,)), ("dt", (day,))]
    if table == "alerts":
        checks += [("severity", SEVERITIES), ("model_scope", MODEL_SCOPES)]
    for name, allowed in checks:
        bad = sorted({str(v) for v in out[name] if v not in allowed and not pd.isna(v)})
        if bad:
            raise AlertsStoreError(
                f"{where}: column {name} has {', '.join(bad)} where only {', '.join(map(str, allowed))} "
                "is allowed; nothing was written"
            )
    out = out.astype(object).where(out.notna(), None)
    return [
        {k: v.to_pydatetime() if isinstance(v, pd.Timestamp) else v for k, v in rec.items()}
        for rec in out.to_dict("records")
    ]
