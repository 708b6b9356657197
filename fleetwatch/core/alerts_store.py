"""The alerts database: one row per incident, replaced per (dataset, day) partition.

SQLAlchemy Core with types that work the same on the embedded SQLite file and on PostgreSQL.
Users read and label alerts with plain SQL, so the tables are simple: comma-separated
``top_metrics`` for ``LIKE`` filters, ``contributions`` and ``phases`` (the same ranking for each
hour of the incident) as JSON text, timestamps in UTC. Columns added since a table was made are
added to it on first use, empty for the rows already there.
"""

from __future__ import annotations

import datetime as dt
import zlib
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from fleetwatch.core.errors import AlertsStoreError
from fleetwatch.core.lake import parse_day

SEVERITIES = ("low", "medium", "high", "critical")
MODEL_SCOPES = ("entity", "fleet")
_UTC = dt.UTC


def partition_lock_key(table: str, dataset: str, day: dt.date) -> int:
    """The PostgreSQL advisory lock that serialises writers of one (table, dataset, day)."""
    return zlib.crc32(f"{table}/{dataset}/{parse_day(day)}".encode())


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (unchanged when it is not a URL)."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return url


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
    _in("severity", SEVERITIES),
    _in("model_scope", MODEL_SCOPES),
    sa.Index("ix_alerts_dataset_dt", "dataset", "dt"),
    sa.Index("ix_alerts_dataset_entity_start", "dataset", "entity_id", "start_ts"),
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

_GENERATED = {"id", "created_at", "label", "labelled_at"}
ALERT_COLUMNS = [c.name for c in alerts.columns if c.name not in _GENERATED]
DRIFT_COLUMNS = [c.name for c in drift.columns if c.name not in _GENERATED]
_INCIDENT_KEY = ("entity_id", "start_ts", "end_ts")
# columns added after the first release: nullable, added to an older table by ``create``, and
# optional in what is published (incident partitions written before them lack them)
_ADDED_COLUMNS = {"alerts": ("phases",)}


class AlertsStore:
    """Alerts and drift tables behind one SQLAlchemy URL; the engine is made on first use."""

    def __init__(self, url: str):
        self.url = url
        self._engine: sa.Engine | None = None
        self._created = False

    # -- connection -------------------------------------------------------------------------

    @property
    def engine(self) -> sa.Engine:
        if self._engine is None:
            self._engine = self._make_engine()
        return self._engine

    def _make_engine(self) -> sa.Engine:
        try:
            url = sa.make_url(self.url)
        except sa.exc.ArgumentError:
            raise AlertsStoreError(
                f"alerts database URL {redact_url(self.url)!r} is not a SQLAlchemy URL; "
                "set FLEETWATCH_ALERTS_DB_URL (e.g. postgresql+psycopg://user:pass@host/db)"
            ) from None
        connect_args = {}
        if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
            Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        elif url.get_backend_name() == "postgresql":
            connect_args["connect_timeout"] = 5
        try:
            return sa.create_engine(url, connect_args=connect_args)
        except (ImportError, sa.exc.NoSuchModuleError) as exc:
            raise AlertsStoreError(
                f"no driver for alerts database {redact_url(self.url)} ({exc}); "
                "set FLEETWATCH_ALERTS_DB_URL with an installed driver, e.g. postgresql+psycopg://"
            ) from None

    @contextmanager
    def _transaction(self):
        """A connection inside one transaction: committed on success, rolled back on error."""
        try:
            conn = self.engine.connect()
        except sa.exc.OperationalError as exc:
            reason = str(exc.orig or exc).strip().splitlines()[0]
            raise AlertsStoreError(
                f"cannot reach the alerts database at {redact_url(self.url)} ({reason}); "
                "start it or set FLEETWATCH_ALERTS_DB_URL to a reachable database"
            ) from None
        with conn, conn.begin():
            yield conn

    def dispose(self) -> None:
        """Close pooled connections (before dropping the database, or at process end)."""
        if self._engine is not None:
            self._engine.dispose()

    def create(self) -> None:
        """Create the tables and indexes that are missing; safe to call any number of times."""
        with self._transaction() as conn:
            metadata.create_all(conn, checkfirst=True)
            for table, names in _ADDED_COLUMNS.items():
                have = {c["name"] for c in sa.inspect(conn).get_columns(table)}
                for name in names:
                    if name not in have:
                        column = metadata.tables[table].c[name]
                        kind = column.type.compile(dialect=conn.dialect)
                        conn.execute(sa.text(f"ALTER TABLE {table} ADD COLUMN {name} {kind}"))
        self._created = True

    def _ensure(self) -> None:
        if not self._created:
            self.create()

    # -- writes ----------------------------------------------------------------------------

    def publish_partition(self, dataset: str, day: dt.date, incidents: pd.DataFrame) -> int:
        """Replace the alerts of ``(dataset, day)`` with ``incidents`` in one transaction.

        Labels (and their times) carry over to incidents that are identical in the rerun:
        same entity, start and end. Returns the number of alerts written.
        """
        day = parse_day(day)
        rows = _records(incidents, ALERT_COLUMNS, dataset, day, "alerts")
        self._ensure()
        where = sa.and_(alerts.c.dataset == dataset, alerts.c.dt == day)
        with self._guard(f"publishing alerts of {dataset} {day}"), self._transaction() as conn:
            _lock(conn, "alerts", dataset, day)
            labelled = sa.select(
                *(alerts.c[k] for k in _INCIDENT_KEY), alerts.c.label, alerts.c.labelled_at
            ).where(where, alerts.c.label.is_not(None))
            kept = {
                tuple(r[k] for k in _INCIDENT_KEY): (r["label"], r["labelled_at"])
                for r in conn.execute(labelled).mappings()
            }
            for row in rows:
                row["label"], row["labelled_at"] = kept.get(tuple(row[k] for k in _INCIDENT_KEY), (None, None))
            conn.execute(sa.delete(alerts).where(where))
            if rows:
                conn.execute(sa.insert(alerts), rows)
        return len(rows)

    def publish_drift(self, dataset: str, day: dt.date, frame: pd.DataFrame) -> int:
        """Replace the drift rows of ``(dataset, day)`` with ``frame`` in one transaction."""
        day = parse_day(day)
        rows = _records(frame, DRIFT_COLUMNS, dataset, day, "drift")
        self._ensure()
        with self._guard(f"publishing drift of {dataset} {day}"), self._transaction() as conn:
            _lock(conn, "drift", dataset, day)
            conn.execute(sa.delete(drift).where(drift.c.dataset == dataset, drift.c.dt == day))
            if rows:
                conn.execute(sa.insert(drift), rows)
        return len(rows)

    def label(self, alert_id: int, value: bool) -> None:
        """Mark alert ``alert_id`` as a true (``True``) or false (``False``) positive."""
        self._ensure()
        with self._transaction() as conn:
            done = conn.execute(
                sa.update(alerts)
                .where(alerts.c.id == alert_id)
                .values(label=bool(value), labelled_at=dt.datetime.now(_UTC))
            )
            if done.rowcount == 0:
                raise AlertsStoreError(f"no alert with id {alert_id} in {redact_url(self.url)}")

    # -- reads -----------------------------------------------------------------------------

    def list_recent(self, limit: int = 20, dataset: str | None = None) -> pd.DataFrame:
        """The ``limit`` most recent alerts (latest start first), optionally of one dataset."""
        stmt = sa.select(alerts).order_by(alerts.c.start_ts.desc(), alerts.c.id.desc()).limit(limit)
        if dataset is not None:
            stmt = stmt.where(alerts.c.dataset == dataset)
        return self._read(stmt)

    def frame(self, dataset: str | None = None, day: dt.date | None = None) -> pd.DataFrame:
        """All alerts, or those of one dataset and/or day, in id order."""
        stmt = sa.select(alerts).order_by(alerts.c.id)
        if dataset is not None:
            stmt = stmt.where(alerts.c.dataset == dataset)
        if day is not None:
            stmt = stmt.where(alerts.c.dt == day)
        return self._read(stmt)

    def get(self, alert_id: int) -> dict:
        """Alert ``alert_id`` as a dict of its columns."""
        frame = self._read(sa.select(alerts).where(alerts.c.id == alert_id))
        if frame.empty:
            raise AlertsStoreError(f"no alert with id {alert_id} in {redact_url(self.url)}")
        return frame.iloc[0].to_dict()

    def labelled(self, dataset: str, value: bool) -> pd.DataFrame:
        """Alerts of ``dataset`` that users labelled ``value`` (true: a confirmed anomaly)."""
        stmt = sa.select(alerts).where(alerts.c.dataset == dataset, alerts.c.label == value).order_by(alerts.c.id)
        return self._read(stmt)

    def query(self, sql: str) -> tuple[list[str], list[tuple]]:
        """Run one SQL statement as written (committed); rows, or the count of rows changed."""
        self._ensure()
        with self._guard("SQL failed"), self._transaction() as conn:
            # no_parameters: the text goes to the driver untouched, so '%' and ':' need no escaping
            result = conn.exec_driver_sql(sql, execution_options={"no_parameters": True})
            if result.returns_rows:
                return list(result.keys()), [tuple(r) for r in result]
            return ["rows_affected"], [(result.rowcount,)]

    def _read(self, stmt) -> pd.DataFrame:
        self._ensure()
        with self._transaction() as conn:
            result = conn.execute(stmt)
            frame = pd.DataFrame(result.all(), columns=list(result.keys()))
        for name in ("start_ts", "end_ts", "created_at", "labelled_at"):
            frame[name] = pd.to_datetime(frame[name], utc=True)
        return frame

    @contextmanager
    def _guard(self, what: str):
        """Database errors of a statement as one line: ``what``, then the database's reason."""
        try:
            yield
        except sa.exc.DBAPIError as exc:
            if exc.connection_invalidated or exc.orig is None:
                raise
            reason = " ".join(str(exc.orig).split())
            raise AlertsStoreError(f"{what}: {reason} (nothing was changed)") from None


def _lock(conn: sa.Connection, table: str, dataset: str, day: dt.date) -> None:
    """Serialise concurrent publishers of one partition (SQLite already allows one writer)."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(partition_lock_key(table, dataset, day))))


def _records(frame: pd.DataFrame, columns: list[str], dataset: str, day: dt.date, table: str) -> list[dict]:
    """Checked rows of ``frame`` for ``table``: columns present, partition and categories right."""
    where = f"{table} for {dataset} {day}"
    optional = _ADDED_COLUMNS.get(table, ())
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
