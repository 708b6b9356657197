"""The alerts database's tables: alerts, one row per incident; its nights; the drift rows.

An incident that persists from one partition into the next stays one alert (``persistent``,
carried for ``nights``, the last one ``last_dt``); ``alert_nights`` holds its part of each
night, so a night can be republished on its own and the alert's span, points and peak summed up
again. The same table gives each entity's minutes in alarm per night.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

__all__ = ["ALERT_COLUMNS", "DRIFT_COLUMNS", "alert_nights", "alerts", "drift", "metadata"]

SEVERITIES = ("low", "medium", "high", "critical")
MODEL_SCOPES = ("entity", "fleet")
_UTC = dt.UTC


class UtcDateTime(sa.types.TypeDecorator):
    """A timezone-aware UTC timestamp on every backend (SQLite keeps no zone of its own)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    @staticmethod
    def _utc(value: dt.datetime | None) -> dt.datetime | None:
        if value is None:
            return None
        return value.astimezone(_UTC) if value.tzinfo else value.replace(tzinfo=_UTC)

    def process_bind_param(self, value, dialect):
        return self._utc(value)

    def process_result_value(self, value, dialect):
        return self._utc(value)


def _in(column: str, values: tuple[str, ...]) -> sa.CheckConstraint:
    allowed = ", ".join(f"'{v}'" for v in values)
    return sa.CheckConstraint(f"{column} IN ({allowed})", name=f"{column}_allowed")


metadata = sa.MetaData(naming_convention={"ck": "ck_%(table_name)s_%(constraint_name)s"})

alerts = sa.Table(
    "alerts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("dataset", sa.String, nullable=False),
    sa.Column("entity_id", sa.String, nullable=False),
    sa.Column("dt", sa.Date, nullable=False),
    sa.Column("start_ts", UtcDateTime, nullable=False),
    sa.Column("end_ts", UtcDateTime, nullable=False),
    sa.Column("n_points", sa.Integer, nullable=False),
    sa.Column("peak_score", sa.Float, nullable=False),
    sa.Column("severity", sa.String, nullable=False),
    sa.Column("threshold", sa.Float, nullable=False),
    sa.Column("top_metrics", sa.String, nullable=False),
    sa.Column("contributions", sa.Text, nullable=False),
    sa.Column("phases", sa.Text, nullable=True),
    sa.Column("model_scope", sa.String, nullable=False),
    sa.Column("model_name", sa.String, nullable=False),
    sa.Column("model_version", sa.String, nullable=False),
    sa.Column("feature_view", sa.String, nullable=False),
    sa.Column("run_id", sa.String, nullable=True),
    sa.Column("created_at", UtcDateTime, nullable=False, server_default=sa.func.now()),
    sa.Column("label", sa.Boolean, nullable=True),
    sa.Column("labelled_at", UtcDateTime, nullable=True),
    sa.Column("new_normal", sa.Boolean, nullable=True),
    sa.Column("persistent", sa.Boolean, nullable=True),
    sa.Column("nights", sa.Integer, nullable=True),
    sa.Column("last_dt", sa.Date, nullable=True),
    _in("severity", SEVERITIES),
    _in("model_scope", MODEL_SCOPES),
    sa.Index("ix_alerts_dataset_dt", "dataset", "dt"),
    sa.Index("ix_alerts_dataset_entity_start", "dataset", "entity_id", "start_ts"),
    sqlite_autoincrement=True,  # SQLite would otherwise hand a deleted alert's id to the next new one
)

drift = sa.Table(
    "drift",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("dataset", sa.String, nullable=False),
    sa.Column("dt", sa.Date, nullable=False),
    sa.Column("entity_id", sa.String, nullable=False),
    sa.Column("feature", sa.String, nullable=False),
    sa.Column("psi", sa.Float, nullable=False),
    sa.Column("drifted", sa.Boolean, nullable=False),
    sa.Column("model_version", sa.String, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False, server_default=sa.func.now()),
    sa.Index("ix_drift_dataset_dt", "dataset", "dt"),
)

alert_nights = sa.Table(
    "alert_nights",
    metadata,
    sa.Column("alert_id", sa.Integer, primary_key=True),
    sa.Column("dt", sa.Date, primary_key=True),
    sa.Column("dataset", sa.String, nullable=False),
    sa.Column("entity_id", sa.String, nullable=False),
    sa.Column("start_ts", UtcDateTime, nullable=False),
    sa.Column("end_ts", UtcDateTime, nullable=False),
    sa.Column("n_points", sa.Integer, nullable=False),
    sa.Column("peak_score", sa.Float, nullable=False),
    sa.Column("severity", sa.String, nullable=False),
    sa.Column("alarm_minutes", sa.Float, nullable=False),
    sa.Column("phases", sa.Text, nullable=True),
    sa.Index("ix_alert_nights_dataset_dt", "dataset", "dt"),
    sa.Index("ix_alert_nights_dataset_entity_dt", "dataset", "entity_id", "dt"),
)

# kept by the store, not published: labels, and what carrying an incident across nights sums up
GENERATED = {"id", "created_at", "label", "labelled_at", "new_normal", "persistent", "nights", "last_dt"}
ALERT_COLUMNS = [c.name for c in alerts.columns if c.name not in GENERATED]
DRIFT_COLUMNS = [c.name for c in drift.columns if c.name not in GENERATED]
# columns added after the first release: nullable, and added to an older table by ``create``
ADDED_COLUMNS = {"alerts": ("phases", "new_normal", "persistent", "nights", "last_dt"), "alert_nights": ("phases",)}
# published columns that incident partitions written before them lack
OPTIONAL_COLUMNS = {"alerts": ("phases",)}
