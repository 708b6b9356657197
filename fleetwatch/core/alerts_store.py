"""The alerts database: one row per incident, replaced per (dataset, day) partition.

SQLAlchemy Core with types that work the same on the embedded SQLite file and on PostgreSQL.
Users read and label alerts with plain SQL, so the tables are simple: comma-separated
``top_metrics`` for ``LIKE`` filters, ``contributions`` and ``phases`` (the same ranking for each
hour of the incident) as JSON text, timestamps in UTC. Columns added since a table was made are
added to it on first use, empty for the rows already there.

An alert keeps its id across reruns of its partition while its incident is the same one (same
entity, overlapping span), and its label goes with it; ids are never reused for other incidents.
An incident that continues the previous night's alert extends it (``alert_carry``): one persistent
alert, its nights in ``alert_nights``; the tables themselves are declared in ``alert_tables``.
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

from fleetwatch.core import alert_carry, alert_rows
from fleetwatch.core.alert_tables import (
    ADDED_COLUMNS,
    ALERT_COLUMNS,
    DRIFT_COLUMNS,
    alert_nights,
    alerts,
    drift,
    metadata,
)
from fleetwatch.core.errors import AlertsStoreError
from fleetwatch.core.incident_batches import FrameBatches, IncidentBatches, key_of
from fleetwatch.core.lake import parse_day
from fleetwatch.core.secrets import redact_url

__all__ = [
    "ALERT_COLUMNS", "AlertsStore", "DRIFT_COLUMNS", "alert_nights", "alerts", "drift", "partition_lock_key", "redact_url",
]

_UTC = dt.UTC
_CREATE_LOCK = zlib.crc32(b"fleetwatch/create-tables")


def partition_lock_key(table: str, dataset: str, day: dt.date) -> int:
    """The PostgreSQL advisory lock that serialises writers of one (table, dataset, day)."""
    return zlib.crc32(f"{table}/{dataset}/{parse_day(day)}".encode())


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
            for table, names in ADDED_COLUMNS.items():
                have = {c["name"] for c in sa.inspect(conn).get_columns(table)}
                for name in names:
                    if name not in have:
                        column = metadata.tables[table].c[name]
                        kind = column.type.compile(dialect=conn.dialect)
                        conn.execute(sa.text(f"ALTER TABLE {table} ADD COLUMN {name} {kind}"))
                        if (table, name) == ("alert_nights", "phases"):
                            alert_carry.backfill_phases(conn)
            alert_carry.backfill(conn)
        self._created = True

    def _ensure(self) -> None:
        if not self._created:
            self.create()

    # -- writes ----------------------------------------------------------------------------

    def publish_partition(
        self, dataset: str, day: dt.date, incidents: pd.DataFrame | IncidentBatches, *,
        carry_step: dt.timedelta | None = None, sampling_seconds: int = 0,
    ) -> int:
        """Replace the alerts of ``(dataset, day)`` with ``incidents`` in one transaction.

        An incident that is the same one as an alert already there (same entity, overlapping
        span) updates that alert in place: it keeps its id, its label and the label's time.
        With ``carry_step``, an entity's first incident of the night that starts within that
        step of where its alert of the previous night ended extends that alert instead
        (``alert_carry``): a persistent alert. Alerts no incident matches are deleted, new
        incidents get new ids (never a deleted one's). ``sampling_seconds`` counts each
        incident's minutes in alarm (``alert_nights``). Returns the number of incidents written.

        ``incidents`` is a frame or an :class:`IncidentBatches`: which incident is which alert is
        decided on every incident's entity and span, then the rows are checked and written a
        batch at a time, so memory holds one batch whatever the night's size. A bad row in any
        batch rolls the whole partition back.
        """
        day = parse_day(day)
        source = incidents if isinstance(incidents, IncidentBatches) else FrameBatches(incidents)
        where_rows = f"alerts for {dataset} {day}"
        alert_rows.require_columns(source.columns, ALERT_COLUMNS, "alerts", where_rows)
        keys = alert_rows.incident_keys(source.keys(), where_rows)
        self._ensure()
        where = sa.and_(alerts.c.dataset == dataset, alerts.c.dt == day)
        with self._guard(f"publishing alerts of {dataset} {day}"), self._transaction() as conn:
            _lock(conn, "alerts", dataset, day)
            old = conn.execute(
                sa.select(alerts.c.id, alerts.c.entity_id, alerts.c.start_ts, alerts.c.end_ts).where(where)
            ).mappings().all()
            night = sa.and_(alert_nights.c.dataset == dataset, alert_nights.c.dt == day)
            touched = set(conn.execute(sa.select(alert_nights.c.alert_id).where(night)).scalars())
            carry = alert_carry.carried(conn, dataset, day, keys, carry_step) if carry_step is not None else {}
            rest = [i for i in range(len(keys)) if i not in carry]
            matched = {rest[j]: a for j, a in alert_carry.match_incidents(old, [keys[i] for i in rest]).items()}
            kept = set(matched.values())
            gone = [r["id"] for r in old if r["id"] not in kept]
            conn.execute(sa.delete(alert_nights).where(night))
            for part in alert_rows.chunks(gone, alert_rows.IN_LIST):
                conn.execute(sa.delete(alert_nights).where(alert_nights.c.alert_id.in_(part)))
                conn.execute(sa.delete(alerts).where(alerts.c.id.in_(part)))
            carried = {key_of(keys[i]): a for i, a in carry.items()}
            updated = {key_of(keys[i]): a for i, a in matched.items()}
            known = {key_of(k) for k in keys}
            seen = 0
            for batch in source:
                rows = alert_rows.records(batch, ALERT_COLUMNS, dataset, day, "alerts")
                alert_rows.write_batch(conn, dataset, day, rows, known, carried, updated, sampling_seconds)
                seen += len(rows)
            if seen != len(keys):
                raise AlertsStoreError(
                    f"{where_rows}: {len(keys)} incidents listed but {seen} read; the partition changed while "
                    "it was published, nothing was written"
                )
            # a new alert is what its one night says; the others are summed up again from their nights
            again = sorted((touched - set(gone)) | set(carry.values()) | set(matched.values()))
            for part in alert_rows.chunks(again, alert_rows.IN_LIST):
                alert_carry.refresh(conn, set(part))
        return len(keys)

    def publish_drift(self, dataset: str, day: dt.date, frame: pd.DataFrame) -> int:
        """Replace the drift rows of ``(dataset, day)`` with ``frame`` in one transaction."""
        day = parse_day(day)
        rows = alert_rows.records(frame, DRIFT_COLUMNS, dataset, day, "drift")
        self._ensure()
        with self._guard(f"publishing drift of {dataset} {day}"), self._transaction() as conn:
            _lock(conn, "drift", dataset, day)
            conn.execute(sa.delete(drift).where(drift.c.dataset == dataset, drift.c.dt == day))
            if rows:
                conn.execute(sa.insert(drift), rows)
        return len(rows)

    def label(self, alert_id: int, value: bool, *, new_normal: bool = False) -> None:
        """Mark alert ``alert_id`` as a true (``True``) or false (``False``) positive.

        ``new_normal`` (with ``value`` False): not an anomaly but the entity's new normal, which
        the next retrain adapts its models to (``models.adaptation``).
        """
        if new_normal and value:
            raise AlertsStoreError(f"alert {alert_id}: a new normal is not an anomaly; label it false with new_normal")
        self._ensure()
        with self._transaction() as conn:
            done = conn.execute(
                sa.update(alerts)
                .where(alerts.c.id == alert_id)
                .values(label=bool(value), new_normal=bool(new_normal), labelled_at=dt.datetime.now(_UTC))
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

    def persistent(self, dataset: str, days: list[dt.date] | None = None) -> pd.DataFrame:
        """Alerts of ``dataset`` carried over more than one night (whose nights touch ``days``)."""
        stmt = sa.select(alerts).where(alerts.c.dataset == dataset, alerts.c.persistent.is_(True)).order_by(alerts.c.id)
        if days:
            stmt = stmt.where(alerts.c.dt <= max(days), alerts.c.last_dt >= min(days))
        return self._read(stmt)

    def entity_nights(self, dataset: str, day: dt.date, nights: int) -> pd.DataFrame:
        """Per entity, minutes in alarm over the ``nights`` nights ending at ``day`` (``alert_carry``)."""
        self._ensure()
        with self._transaction() as conn:
            return alert_carry.entity_nights(conn, dataset, parse_day(day), nights)

    def last_night(self, dataset: str) -> dt.date | None:
        """The newest night with alerts of ``dataset``, None when it has none."""
        self._ensure()
        with self._transaction() as conn:
            return conn.execute(sa.select(sa.func.max(alert_nights.c.dt)).where(alert_nights.c.dataset == dataset)).scalar()

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
