"""Which incident is which alert: the same one within a night (overlapping spans), and incidents
carried from night to night, one alert per deviation however many partitions it spans.

A night's first incident of an entity continues the previous night's alert when the two are one
incident by the rule that joins flagged points (``models.incidents.max_step``: at most the gap
plus one sampling interval between the alert's last flagged row and the incident's first). The
alert then keeps its id and label; its part of each night is a row of ``alert_nights``, from
which its span, points, peak and severity are summed up again after every publish, so
republishing any night gives the same alert. Its ``phases`` (which metrics moved, hour by hour)
are those of all its nights in time order; ``top_metrics`` and ``contributions`` stay those of
the night it began.
"""

from __future__ import annotations

import datetime as dt
import json

import pandas as pd
import sqlalchemy as sa

from fleetwatch.core.alert_tables import SEVERITIES, alert_nights, alerts

MINUTES_PER_DAY = 24 * 60


def overlap(a: dict, b: dict) -> dt.timedelta | None:
    """How long the spans of ``a`` and ``b`` overlap (zero when they touch), None when apart."""
    start, end = max(a["start_ts"], b["start_ts"]), min(a["end_ts"], b["end_ts"])
    return end - start if start <= end else None


def match_incidents(old: list, rows: list[dict]) -> dict[int, int]:
    """Which new row (by position) is the same incident as which stored alert (by id).

    Same entity and overlapping spans; each alert and each row pairs at most once, the longest
    overlaps first (then the earliest starts), so a rerun that shifts or splits an incident keeps
    its id on the part that overlaps it most.
    """
    by_entity: dict[str, list] = {}
    for alert in old:
        by_entity.setdefault(alert["entity_id"], []).append(alert)
    pairs = []
    for i, row in enumerate(rows):
        for alert in by_entity.get(row["entity_id"], ()):
            span = overlap(row, alert)
            if span is not None:
                pairs.append((-span, alert["start_ts"], row["start_ts"], i, alert["id"]))
    matched, used = {}, set()
    for *_, i, alert_id in sorted(pairs):
        if i not in matched and alert_id not in used:
            matched[i] = alert_id
            used.add(alert_id)
    return matched


def continues(previous_end, start, step) -> bool:
    """Whether an incident starting at ``start`` continues one that ended at ``previous_end``: it
    starts after it, by at most ``step``. The one rule of carrying, here and in the evaluation."""
    return dt.timedelta(0) < start - previous_end <= step


def carried(conn: sa.Connection, dataset: str, day: dt.date, rows: list[dict], step: dt.timedelta) -> dict[int, int]:
    """Which rows (by position) continue which alert of the previous night (by id).

    Per entity, only the night's earliest incident can continue an alert, and only the alert
    whose part of the previous night ended last, when at most ``step`` lies between them.
    """
    previous = conn.execute(
        sa.select(alert_nights.c.alert_id, alert_nights.c.entity_id, alert_nights.c.end_ts).where(
            alert_nights.c.dataset == dataset, alert_nights.c.dt == day - dt.timedelta(days=1)
        )
    ).mappings().all()
    last: dict[str, dict] = {}
    for night in previous:
        if night["entity_id"] not in last or night["end_ts"] > last[night["entity_id"]]["end_ts"]:
            last[night["entity_id"]] = night
    first: dict[str, int] = {}
    for i, row in enumerate(rows):
        if row["entity_id"] not in first or row["start_ts"] < rows[first[row["entity_id"]]]["start_ts"]:
            first[row["entity_id"]] = i
    out = {}
    for entity, i in first.items():
        night = last.get(entity)
        if night is not None and continues(night["end_ts"], rows[i]["start_ts"], step):
            out[i] = night["alert_id"]
    return out


def night_rows(dataset: str, day: dt.date, rows: list[dict], ids: list[int], sampling_seconds: int) -> list[dict]:
    """The ``alert_nights`` rows of one night: each incident's part, with its minutes in alarm
    (first to last flagged row, plus one sampling interval)."""
    out = []
    for row, alert_id in zip(rows, ids, strict=True):
        minutes = (row["end_ts"] - row["start_ts"]).total_seconds() / 60 + sampling_seconds / 60
        out.append(
            {
                "alert_id": alert_id, "dt": day, "dataset": dataset, "entity_id": row["entity_id"],
                "start_ts": row["start_ts"], "end_ts": row["end_ts"], "n_points": row["n_points"],
                "peak_score": row["peak_score"], "severity": row["severity"], "alarm_minutes": minutes,
                "phases": row.get("phases"),
            }
        )
    return out


def joined_phases(nights) -> str | None:
    """One alert's phases over its nights (each a JSON list or None), in time order; None when no
    night has any (alerts published before phases existed)."""
    lists = [json.loads(n) for n in nights if isinstance(n, str) and n]
    return json.dumps([phase for phases in lists for phase in phases]) if lists else None


def refresh(conn: sa.Connection, ids: set[int]) -> None:
    """Sum up each alert of ``ids`` from its nights: span, points, peak, severity, nights."""
    if not ids:
        return
    parts = conn.execute(sa.select(alert_nights).where(alert_nights.c.alert_id.in_(sorted(ids)))).mappings().all()
    by_alert: dict[int, list] = {}
    for part in parts:
        by_alert.setdefault(part["alert_id"], []).append(part)
    changes: dict[bool, list[dict]] = {True: [], False: []}  # by whether the alert's phases are set
    for alert_id, nights in by_alert.items():
        nights = sorted(nights, key=lambda n: n["dt"])
        phases = joined_phases(n["phases"] for n in nights)
        changes[phases is not None].append({
            "_alert_id": alert_id,
            **({"phases": phases} if phases is not None else {}),
            "start_ts": min(n["start_ts"] for n in nights),
            "end_ts": max(n["end_ts"] for n in nights),
            "n_points": sum(n["n_points"] for n in nights),
            "peak_score": max(n["peak_score"] for n in nights),
            "severity": max((n["severity"] for n in nights), key=SEVERITIES.index),
            "nights": len(nights),
            "persistent": len(nights) > 1,
            "last_dt": max(n["dt"] for n in nights),
        })
    for rows in changes.values():
        if rows:  # one statement for the lot
            conn.execute(sa.update(alerts).where(alerts.c.id == sa.bindparam("_alert_id")), rows)


def backfill(conn: sa.Connection) -> None:
    """Give alerts published before ``alert_nights`` existed their one night (and their
    carry columns), so carrying and the minutes in alarm see them too."""
    have = sa.select(alert_nights.c.alert_id)
    cols = [alerts.c[c] for c in ("id", "dt", "dataset", "entity_id", "start_ts", "end_ts", "n_points", "peak_score", "severity",
                                  "phases")]
    rows = conn.execute(sa.select(*cols).where(alerts.c.id.not_in(have))).mappings().all()
    if not rows:
        return
    conn.execute(
        sa.insert(alert_nights),
        [
            {**{k: r[k] for k in r if k != "id"}, "alert_id": r["id"],
             "alarm_minutes": (r["end_ts"] - r["start_ts"]).total_seconds() / 60}
            for r in rows
        ],
    )
    conn.execute(
        sa.update(alerts).where(alerts.c.nights.is_(None)).values(nights=1, persistent=False, last_dt=alerts.c.dt)
    )


def entity_nights(conn: sa.Connection, dataset: str, day: dt.date, nights: int) -> pd.DataFrame:
    """Per entity with alarms in the ``nights`` nights ending at ``day``: minutes in alarm, their
    share of those nights, and the entity's open persistent alert (carried into ``day``), if any."""
    first = day - dt.timedelta(days=nights - 1)
    stmt = (
        sa.select(alert_nights.c.entity_id, sa.func.sum(alert_nights.c.alarm_minutes).label("alarm_minutes"))
        .where(alert_nights.c.dataset == dataset, alert_nights.c.dt.between(first, day))
        .group_by(alert_nights.c.entity_id)
    )
    frame = pd.DataFrame(conn.execute(stmt).all(), columns=["entity_id", "alarm_minutes"])
    frame["alarm_share"] = frame["alarm_minutes"] / (nights * MINUTES_PER_DAY)
    open_alerts = conn.execute(
        sa.select(alerts.c.entity_id, alerts.c.id, alerts.c.nights, alerts.c.label, alerts.c.new_normal).where(
            alerts.c.dataset == dataset, alerts.c.last_dt == day, alerts.c.persistent.is_(True)
        ).order_by(alerts.c.id)
    ).mappings().all()
    persistent = {a["entity_id"]: a for a in open_alerts}
    frame["persistent_alert"] = frame["entity_id"].map(lambda e: persistent[e]["id"] if e in persistent else None)
    frame["nights"] = frame["entity_id"].map(lambda e: persistent[e]["nights"] if e in persistent else None)
    frame["new_normal"] = frame["entity_id"].map(lambda e: bool(persistent[e]["new_normal"]) if e in persistent else False)
    return frame.sort_values(["alarm_minutes", "entity_id"], ascending=[False, True]).reset_index(drop=True)


def backfill_phases(conn: sa.Connection) -> None:
    """Give each alert's first night the alert's phases, once ``alert_nights.phases`` is added to
    an older database (before it, an alert's phases were those of its first night)."""
    first = (
        sa.select(alerts.c.phases)
        .where(alerts.c.id == alert_nights.c.alert_id, alerts.c.dt == alert_nights.c.dt)
        .scalar_subquery()
    )
    conn.execute(sa.update(alert_nights).where(alert_nights.c.phases.is_(None)).values(phases=first))
