"""The engine factory, sessions, the dialect helpers and the migration entry points (tables: ``tables``)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Session

from tierguard.errors import SchemaNotReady

MIGRATIONS = Path(__file__).with_name("migrations")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)




_COMPILED: dict[tuple[str, tuple[str, ...]], tuple[str, dict[str, Any]]] = {}


def execute_many(session: Session, name: str, stmt: Any, rows: list[dict[str, Any]], *,
                 returning: bool = False) -> list[Any]:
    """Run one statement for many rows (all with the same keys); the first returned column's values.

    On PostgreSQL the statement is compiled once and handed to psycopg's own
    ``executemany`` (pipelined): SQLAlchemy's multi-row VALUES form is a new,
    long query text per page, which psycopg parses again every time. ``name``
    identifies ``stmt`` in the cache of compiled statements.
    """
    if not rows:
        return []
    if session.get_bind().dialect.name != "postgresql":
        result = session.execute(stmt, rows)
        return list(result.scalars()) if returning else []
    dialect = session.get_bind().dialect
    keys = tuple(rows[0])
    cached = _COMPILED.get((name, keys))
    if cached is None:
        compiled = stmt.compile(dialect=dialect, column_keys=list(keys))
        procs = {name: bp.type.dialect_impl(dialect).bind_processor(dialect)
                 for name, bp in compiled.binds.items()}
        cached = _COMPILED[(name, keys)] = (str(compiled), {k: f for k, f in procs.items() if f})
    sql, procs = cached
    params = [{k: (procs[k](v) if k in procs else v) for k, v in row.items()} for row in rows]
    import psycopg

    connection = session.connection()
    raw = connection.connection.dbapi_connection
    cursor = raw.cursor()  # type: ignore[union-attr]
    try:
        cursor.executemany(sql, params, returning=returning)
        out = []
        while returning:
            out.extend(r[0] for r in cursor.fetchall())
            if not cursor.nextset():
                break
        return out
    except psycopg.Error as err:
        # As SQLAlchemy would raise it (OperationalError for an outage: retried by the callers),
        # and a dead connection is not handed out again.
        gone = dialect.is_disconnect(err, raw, cursor)
        if gone:
            connection.invalidate(err)
        raise sa.exc.DBAPIError.instance(sql, None, err, psycopg.Error,
                                         connection_invalidated=gone) from err
    finally:
        if not cursor.closed:
            cursor.close()


def upsert_insert(session: Session) -> Any:
    """The dialect's ``insert`` (with ``on_conflict_do_*``): PostgreSQL's or SQLite's."""
    return dialect_insert(session.get_bind().dialect.name)


def dialect_insert(dialect: str) -> Any:
    """:func:`upsert_insert` for the dialect named ``dialect``."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert


def insert_new(session: Session, table: Any, values: dict[str, Any]) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING; the new row's primary key, or None if it existed."""
    insert = upsert_insert(session)
    pk = list(table.primary_key.columns)[0]
    stmt = insert(table).values(**values).on_conflict_do_nothing().returning(pk)
    row = session.execute(stmt).first()
    return None if row is None else row[0]


def normalise_url(url: str) -> str:
    """Use psycopg 3 for plain ``postgresql://`` URLs."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def make_engine(url: str, *, pool_size: int = 10) -> Engine:
    url = normalise_url(url)
    if url.startswith("sqlite"):
        memory = url in ("sqlite://", "sqlite:///:memory:")
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                                  **({"poolclass": sa.pool.StaticPool} if memory else {}))
        _sqlite_immediate(engine)
        return engine
    return sa.create_engine(url, pool_pre_ping=True, pool_size=pool_size,
                            max_overflow=pool_size, pool_timeout=60)


def _sqlite_immediate(engine: Engine) -> None:
    """SQLite: WAL, and write transactions that take the lock at BEGIN (no upgrade deadlocks)."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def session(engine: Engine) -> Session:
    return Session(engine, expire_on_commit=False)


def alembic_config(engine: Engine) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


UPGRADE_LOCK = 0x7467_6462  # pg_advisory_lock key: one `db upgrade` at a time per database


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate to ``revision``. On PostgreSQL, concurrent upgrades (init containers of many
    pods starting at once) wait for each other; the later ones find nothing left to do."""
    from alembic import command

    if engine.dialect.name != "postgresql":
        command.upgrade(alembic_config(engine), revision)
        return
    # Session-level lock on an autocommit connection: no transaction left idle meanwhile.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as lock:
        lock.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": UPGRADE_LOCK})
        try:
            command.upgrade(alembic_config(engine), revision)
        finally:
            lock.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": UPGRADE_LOCK})


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config(None)).get_current_head()  # type: ignore[arg-type]


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def check_schema(engine: Engine) -> None:
    """Raise :class:`SchemaNotReady` unless the database is at the head revision."""
    try:
        current = current_revision(engine)
    except sa.exc.OperationalError as err:
        raise SchemaNotReady(f"cannot reach the database: {err.orig}") from None
    head = head_revision()
    if current != head:
        state = "not initialised" if current is None else f"at revision {current}"
        raise SchemaNotReady(f"database is {state}, head is {head}: run `tierguard db upgrade`")
