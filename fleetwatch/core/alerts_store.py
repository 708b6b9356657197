"""The alerts database: one row per incident, replaced per (dataset, day) partition.

SQLAlchemy Core with types that work the same on the embedded SQLite file and on PostgreSQL.
Users read and label alerts with plain SQL, so the tables are simple: comma-separated
``top_metrics`` for ``LIKE`` filters, ``contributions`` and ``phases`` (the same ranking for each
hour of the incident) as JSON text, timestamps in UTC. Columns added since a table was made are
added to it on first use, empty for the rows already there.

An alert keeps its id across reruns of its partition while its incident is the same one (same
entity, overlapping span), and its label goes with it; ids are never reused for other incidents.
``read_query`` (``fleetwatch sql``) is read-only by construction: a read-only SQLite file, or a
read-only PostgreSQL transaction (as the analyst role where there is one), one statement a call.
"""

from __future__ import annotations

import datetime as dt
import time
import zlib
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from fleetwatch.core.errors import AlertsStoreError
from fleetwatch.core.lake import parse_day
from fleetwatch.core.secrets import redact_url

__all__ = ["ALERT_COLUMNS", "AlertsStore", "DRIFT_COLUMNS", "alerts", "drift", "partition_lock_key", "redact_url"]

SEVERITIES = ("low", "medium", "high", "critical")
MODEL_SCOPES = ("entity", "fleet")
_UTC = dt.UTC


def partition_lock_key(table: str, dataset: str, day: dt.date) -> int:
    """The PostgreSQL advisory lock that serialises writers of one (table, dataset, day)."""
    return zlib.crc32(f"{table}/{dataset}/{parse_day(day)}".encode())


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

_GENERATED = {"id", "created_at", "label", "labelled_at"}
ALERT_COLUMNS = [c.name for c in alerts.columns if c.name not in _GENERATED]
DRIFT_COLUMNS = [c.name for c in drift.columns if c.name not in _GENERATED]
_CREATE_LOCK = zlib.crc32(b"fleetwatch/create-tables")
# columns added after the first release: nullable, added to an older table by ``create``, and
# optional in what is published (incident partitions written before them lack them)
_ADDED_COLUMNS = {"alerts": ("phases",)}


class AlertsStore:
    """Alerts and drift tables behind one SQLAlchemy URL; the engine is made on first use.

    A database that does not answer is tried ``connect_attempts`` times, waiting
    ``connect_backoff_s`` and then twice as long each time, before the error names it.
    """

    def __init__(self, url: str, *, connect_attempts: int = 3, connect_backoff_s: float = 0.5):
        self.url = url
        self.connect_attempts = max(1, connect_attempts)
        self.connect_backoff_s = connect_backoff_s
        self._engine: sa.Engine | None = None
        self._read_engine: sa.Engine | None = None
        self._created = False

    # -- connection -------------------------------------------------------------------------

    @property
    def engine(self) -> sa.Engine:
        if self._engine is None:
            self._engine = self._make_engine()
        return self._engine

    def _parsed_url(self) -> sa.URL:
        try:
            return sa.make_url(self.url)
        except sa.exc.ArgumentError:
            raise AlertsStoreError(
                f"alerts database URL {redact_url(self.url)!r} is not a SQLAlchemy URL; "
                "set FLEETWATCH_ALERTS_DB_URL (e.g. postgresql+psycopg://user:pass@host/db)"
            ) from None

    def _make_engine(self, read_only: bool = False) -> sa.Engine:
        url = self._parsed_url()
        connect_args = {}
        if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
            path = Path(url.database).expanduser().absolute()
            path.parent.mkdir(parents=True, exist_ok=True)
            if read_only:  # the file opened read-only: no statement can change it
                url = url.set(database=f"file:{path}", query={**url.query, "mode": "ro", "uri": "true"})
        elif url.get_backend_name() == "postgresql":
            connect_args["connect_timeout"] = 5
            if read_only:
                connect_args["options"] = "-c default_transaction_read_only=on"
        try:
            return sa.create_engine(url, connect_args=connect_args)
        except (ImportError, sa.exc.NoSuchModuleError) as exc:
            raise AlertsStoreError(
                f"no driver for alerts database {redact_url(self.url)} ({exc}); "
                "set FLEETWATCH_ALERTS_DB_URL with an installed driver, e.g. postgresql+psycopg://"
            ) from None

    def _connect(self, engine: sa.Engine) -> sa.Connection:
        """A connection, after bounded retries with backoff; else one line naming the database."""
        for attempt in range(self.connect_attempts):
            try:
                return engine.connect()
            except sa.exc.OperationalError as exc:
                if attempt + 1 < self.connect_attempts:
                    time.sleep(self.connect_backoff_s * 2**attempt)
                    continue
                reason = str(exc.orig or exc).strip().splitlines()[0]
                raise AlertsStoreError(
                    f"cannot reach the alerts database at {redact_url(self.url)} after {self.connect_attempts} "
                    f"attempts ({reason}); start it or set FLEETWATCH_ALERTS_DB_URL to a reachable database"
                ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    @contextmanager
    def _transaction(self):
        """A connection inside one transaction: committed on success, rolled back on error."""
        with self._connect(self.engine) as conn, conn.begin():
            yield conn

    def dispose(self) -> None:
        """Close pooled connections (before dropping the database, or at process end)."""
        for engine in (self._engine, self._read_engine):
            if engine is not None:
                engine.dispose()

    def create(self) -> None:
        """Create the tables and indexes that are missing; safe to call any number of times.

        On PostgreSQL an advisory lock makes concurrent first users (four publishers of a fresh
        database) create the tables once; the others wait and find them made.
        """
        with self._guard("creating the alerts tables"), self._transaction() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_CREATE_LOCK)))
            _autoincrement_alert_ids(conn)
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

        An incident that is the same one as an alert already there (same entity, overlapping
        span) updates that alert in place: it keeps its id, its label and the label's time.
        Alerts no incident matches are deleted, new incidents get new ids (never a deleted one's).
        Returns the number of alerts written.
        """
        day = parse_day(day)
        rows = _records(incidents, ALERT_COLUMNS, dataset, day, "alerts")
        self._ensure()
        where = sa.and_(alerts.c.dataset == dataset, alerts.c.dt == day)
        with self._guard(f"publishing alerts of {dataset} {day}"), self._transaction() as conn:
            _lock(conn, "alerts", dataset, day)
            old = conn.execute(
                sa.select(alerts.c.id, alerts.c.entity_id, alerts.c.start_ts, alerts.c.end_ts).where(where)
            ).mappings().all()
            matched = _match_incidents(old, rows)
            gone = [r["id"] for r in old if r["id"] not in matched.values()]
            if gone:
                conn.execute(sa.delete(alerts).where(alerts.c.id.in_(gone)))
            for i, alert_id in matched.items():
                conn.execute(sa.update(alerts).where(alerts.c.id == alert_id).values(**rows[i]))
            new = [row for i, row in enumerate(rows) if i not in matched]
            if new:
                conn.execute(sa.insert(alerts), new)
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
        """Run one SQL statement as written (committed); rows, or the count of rows changed.

        For the platform's own code and tests; users get :meth:`read_query`.
        """
        self._ensure()
        with self._guard("SQL failed"), self._transaction() as conn:
            # no_parameters: the text goes to the driver untouched, so '%' and ':' need no escaping
            result = conn.exec_driver_sql(sql, execution_options={"no_parameters": True})
            if result.returns_rows:
                return list(result.keys()), [tuple(r) for r in result]
            return ["rows_affected"], [(result.rowcount,)]

    def read_query(self, sql: str, role: str | None = None) -> tuple[list[str], list[tuple]]:
        """Run one SQL statement that cannot change anything; its columns and rows.

        Read-only by construction, not by reading the SQL: SQLite opens the file read-only
        (``mode=ro``); PostgreSQL runs it in a read-only transaction (the session default too)
        that is rolled back, as ``role`` when that role exists and the user may take it. The
        statement goes alone to the database, which refuses more than one (SQLite's driver, a
        PostgreSQL prepared statement).
        """
        self._ensure()
        if self._read_engine is None:
            self._read_engine = self._make_engine(read_only=True)
        with self._guard("SQL failed (fleetwatch sql is read-only; label alerts with `fleetwatch alerts label`)"):
            with self._connect(self._read_engine) as conn:
                try:
                    if conn.dialect.name == "postgresql":
                        return _read_postgresql(conn, sql, role)
                    result = conn.exec_driver_sql(sql, execution_options={"no_parameters": True})
                    if not result.returns_rows:
                        return [], []
                    return list(result.keys()), [tuple(r) for r in result]
                except sa.exc.DBAPIError as exc:
                    if _is_several_statements(exc):
                        raise AlertsStoreError(
                            "fleetwatch sql runs one statement per call: run each statement on its own (nothing was run)"
                        ) from None
                    raise
                finally:
                    conn.rollback()

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


def _read_postgresql(conn: sa.Connection, sql: str, role: str | None) -> tuple[list[str], list[tuple]]:
    """``sql`` in a read-only transaction, as ``role`` when it can be taken, as one prepared statement."""
    conn.exec_driver_sql("SET TRANSACTION READ ONLY")
    if role and conn.execute(
        sa.text("SELECT pg_has_role(current_user, oid, 'MEMBER') FROM pg_roles WHERE rolname = :r"), {"r": role}
    ).scalar():
        conn.exec_driver_sql(f"SET LOCAL ROLE {conn.dialect.identifier_preparer.quote(role)}")
    cursor = conn.connection.driver_connection.cursor()
    try:
        cursor.execute(sql, prepare=True)  # a prepared statement holds exactly one command
        if cursor.description is None:
            return [], []
        return [d.name for d in cursor.description], [tuple(r) for r in cursor.fetchall()]
    except Exception as exc:  # the driver's error, as SQLAlchemy would wrap it
        raise sa.exc.DBAPIError.instance(sql, None, exc, conn.dialect.loaded_dbapi.Error) from None
    finally:
        cursor.close()


def _is_several_statements(exc: sa.exc.DBAPIError) -> bool:
    text = str(exc.orig)
    return "one statement at a time" in text or "multiple commands into a prepared statement" in text


def _overlap(a: dict, b: dict) -> dt.timedelta | None:
    """How long the spans of ``a`` and ``b`` overlap (zero when they touch), None when apart."""
    start, end = max(a["start_ts"], b["start_ts"]), min(a["end_ts"], b["end_ts"])
    return end - start if start <= end else None


def _match_incidents(old: list, rows: list[dict]) -> dict[int, int]:
    """Which new row (by position) is the same incident as which stored alert (by id).

    Same entity and overlapping spans; each alert and each row pairs at most once, the longest
    overlaps first (then the earliest starts), so a rerun that shifts or splits an incident keeps
    its id on the part that overlaps it most.
    """
    pairs = []
    for i, row in enumerate(rows):
        for alert in old:
            if alert["entity_id"] == row["entity_id"]:
                span = _overlap(row, alert)
                if span is not None:
                    pairs.append((-span, alert["start_ts"], row["start_ts"], i, alert["id"]))
    matched, used = {}, set()
    for *_, i, alert_id in sorted(pairs):
        if i not in matched and alert_id not in used:
            matched[i] = alert_id
            used.add(alert_id)
    return matched


def _autoincrement_alert_ids(conn: sa.Connection) -> None:
    """Rebuild an SQLite alerts table made without AUTOINCREMENT, so no id is handed out twice."""
    if conn.dialect.name != "sqlite":
        return
    made = conn.exec_driver_sql("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'alerts'").scalar()
    if made is None or "AUTOINCREMENT" in made.upper():
        return
    have = [c["name"] for c in sa.inspect(conn).get_columns("alerts")]
    for index in sa.inspect(conn).get_indexes("alerts"):
        conn.exec_driver_sql(f'DROP INDEX "{index["name"]}"')
    conn.exec_driver_sql("ALTER TABLE alerts RENAME TO alerts_before_autoincrement")
    alerts.create(conn)
    names = ", ".join(have)
    conn.exec_driver_sql(f"INSERT INTO alerts ({names}) SELECT {names} FROM alerts_before_autoincrement")
    conn.exec_driver_sql("DROP TABLE alerts_before_autoincrement")


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
