"""The read-only ``tierguard_reader`` role the dashboards log in as (PostgreSQL only).

``tierguard db upgrade --create-reader`` creates it (or resets its password and
grants) with ``SELECT`` on exactly the tables the dashboards and Grafana's alert
rules read, and nothing else: no write on any table, no other table, no schema
changes. Its sessions default to read-only transactions and a statement timeout,
so a heavy ad-hoc query cannot hold the writers up for long either.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tierguard.errors import ConfigError

READER = "tierguard_reader"
TABLES = ("category", "sample", "rollup", "rollup_error", "traffic", "route_change", "headroom")
STATEMENT_TIMEOUT = "30s"


def create_reader(engine: Engine, password: str) -> list[str]:
    """Create or refresh the reader role; the tables it may read."""
    if engine.dialect.name != "postgresql":
        raise ConfigError(["--create-reader needs PostgreSQL (SQLite has no roles)"])
    if not password:
        raise ConfigError(["TIERGUARD_READER_PASSWORD is not set: the reader role needs a password"])
    try:
        return _grant(engine, password)
    except sa.exc.DBAPIError as err:  # the statement (a password verifier) is not shown
        reason = str(err.orig).strip().splitlines()[0] if err.orig else type(err).__name__
        raise ConfigError([f"cannot create the role {READER}: {reason} (the database user needs "
                           "CREATEROLE, or create it once as an administrator)"]) from None


def _grant(engine: Engine, password: str) -> list[str]:
    with engine.begin() as conn:
        # A SCRAM verifier made here, so the password itself never reaches the server's logs.
        raw = conn.connection.dbapi_connection
        verifier = raw.pgconn.encrypt_password(password.encode(), READER.encode(), b"scram-sha-256")
        literal = conn.execute(sa.text("SELECT quote_literal(:p)"),
                               {"p": verifier.decode()}).scalar_one()
        database = conn.execute(sa.text("SELECT quote_ident(current_database())")).scalar_one()
        exists = conn.execute(sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"),
                              {"r": READER}).scalar()
        verb = "ALTER" if exists else "CREATE"
        conn.exec_driver_sql(f"{verb} ROLE {READER} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE "
                             f"NOREPLICATION PASSWORD {literal}")  # no bind syntax in a verifier
        conn.execute(sa.text(f"ALTER ROLE {READER} SET default_transaction_read_only = on"))
        conn.execute(sa.text(f"ALTER ROLE {READER} SET statement_timeout = '{STATEMENT_TIMEOUT}'"))
        conn.execute(sa.text(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {READER}"))
        conn.execute(sa.text(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {READER}"))
        conn.execute(sa.text(f"REVOKE CREATE ON SCHEMA public FROM {READER}"))
        conn.execute(sa.text(f"GRANT CONNECT ON DATABASE {database} TO {READER}"))
        conn.execute(sa.text(f"GRANT USAGE ON SCHEMA public TO {READER}"))
        conn.execute(sa.text(f"GRANT SELECT ON {', '.join(TABLES)} TO {READER}"))
    return list(TABLES)
