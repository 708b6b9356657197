"""Database roles of the alerts database: a writer that owns the tables, an analyst that reads.

``fleetwatch db init`` runs :func:`init_roles` once per database, as an administrator (a user
that may create roles); running it again changes nothing. Passwords are never stored here: they
come from the caller (the compose stack's ``.env``), or are set later with ``ALTER ROLE``.
"""

from __future__ import annotations

import re

import sqlalchemy as sa

from fleetwatch.core.alerts_store import AlertsStore, alert_nights, alerts, drift
from fleetwatch.core.errors import AlertsStoreError

_ROLE = re.compile(r"^[a-z_][a-z0-9_]*$")
_TABLES = (alerts.name, alert_nights.name, drift.name)


def _literal(text: str) -> str:
    """A SQL string literal (role passwords cannot be bound parameters in ALTER ROLE)."""
    return "'" + text.replace("'", "''") + "'"


def init_roles(
    store: AlertsStore,
    writer: str,
    analyst: str,
    writer_password: str | None = None,
    analyst_password: str | None = None,
) -> list[str]:
    """Create the tables and, on PostgreSQL, the writer and analyst roles; returns how to connect as each.

    The writer owns the tables (and their id sequences); the analyst may connect, use the schema
    and SELECT from every table there now and later (default privileges of the writer's tables).
    On SQLite there are no roles: ``fleetwatch sql`` opens the file read-only instead.
    """
    for role in (writer, analyst):
        if not _ROLE.match(role):
            raise AlertsStoreError(f"role name {role!r} is not valid: lower-case letters, digits and _")
    store.create()
    url = sa.make_url(store.url)
    if url.get_backend_name() != "postgresql":
        return [
            f"{url.get_backend_name()} has no roles: the platform writes {store.url}, "
            "and `fleetwatch sql` opens it read-only"
        ]
    with store._guard("setting up the database roles"), store._transaction() as conn:
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(0x46575244)))  # one init at a time
        database = conn.exec_driver_sql("SELECT current_database()").scalar()
        for role, password in ((writer, writer_password), (analyst, analyst_password)):
            exists = conn.execute(sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}).scalar()
            if not exists:
                conn.exec_driver_sql(f'CREATE ROLE "{role}" LOGIN')
            if password:
                conn.exec_driver_sql(f'ALTER ROLE "{role}" PASSWORD {_literal(password)}')
            conn.exec_driver_sql(f'GRANT CONNECT ON DATABASE "{database}" TO "{role}"')
        conn.exec_driver_sql(f'GRANT USAGE, CREATE ON SCHEMA public TO "{writer}"')
        conn.exec_driver_sql(f'GRANT USAGE ON SCHEMA public TO "{analyst}"')
        for table in _TABLES:
            conn.exec_driver_sql(f'ALTER TABLE {table} OWNER TO "{writer}"')
        conn.exec_driver_sql(f'REVOKE ALL ON ALL TABLES IN SCHEMA public FROM "{analyst}"')
        conn.exec_driver_sql(f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{analyst}"')
        conn.exec_driver_sql(
            f'ALTER DEFAULT PRIVILEGES FOR ROLE "{writer}" IN SCHEMA public GRANT SELECT ON TABLES TO "{analyst}"'
        )
        if not conn.execute(sa.text("SELECT pg_has_role(current_user, :r, 'MEMBER')"), {"r": analyst}).scalar():
            conn.exec_driver_sql(f'GRANT "{analyst}" TO CURRENT_USER')  # `fleetwatch sql` may take the role
    host = f"{url.host or 'localhost'}:{url.port or 5432}"
    base = f"postgresql+psycopg://{{role}}:<password>@{host}/{url.database}"
    return [
        f"writer {writer} (owns the tables; the platform's jobs): FLEETWATCH_ALERTS_DB_URL={base.format(role=writer)}",
        f"analyst {analyst} (SELECT only; psql, BI tools, Grafana): psql 'postgresql://{analyst}@{host}/{url.database}'",
        "passwords: set with ALTER ROLE ... PASSWORD, or pass them to `fleetwatch db init` "
        "(ALERTS_WRITER_PASSWORD, ALERTS_ANALYST_PASSWORD); `fleetwatch sql` runs as the analyst",
    ]
