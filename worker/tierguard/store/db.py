"""Tables (SQLModel), the engine factory and the migration entry points."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Column, Field, Session, SQLModel

from tierguard.errors import SchemaNotReady

MIGRATIONS = Path(__file__).with_name("migrations")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _ts(index: bool = False) -> Any:
    return Field(default_factory=utcnow, sa_column=Column(sa.DateTime(timezone=True),
                                                           nullable=False, index=index))


class Category(SQLModel, table=True):
    name: str = Field(primary_key=True)
    candidate: str
    reference: str
    routed_model: str
    threshold: float | None = None    # copied from the policy, for dashboards and alert rules
    sample_rate: float | None = None  # copied from the policy
    # The adaptive rate beat last chose, and why (null for fixed sampling; tierguard.rates).
    chosen_rate: float | None = None
    chosen_rate_reason: str | None = None
    pinned: bool = False
    pin_reason: str | None = None
    pinned_by: str | None = None
    pinned_until: dt.datetime | None = Field(
        default=None, sa_column=Column(sa.DateTime(timezone=True), nullable=True))
    detector_state: dict = Field(default_factory=dict, sa_column=Column(sa.JSON, nullable=False))
    version: int = 1
    updated_at: dt.datetime = _ts()


class Sample(SQLModel, table=True):
    __table_args__ = (
        sa.Index("ix_sample_category_created_at", "category", "created_at"),
        # The dashboard's drill-down (disagreement reasons) reads only these rows.
        sa.Index("ix_sample_disagreements", "created_at",
                 postgresql_where=sa.text("agree = false AND kind = 'shadow'"),
                 sqlite_where=sa.text("agree = 0 AND kind = 'shadow'")),
    )

    job_id: str = Field(primary_key=True)
    category: str = Field(index=True)
    kind: str = Field(default="shadow", sa_column_kwargs={"server_default": "shadow"})
    served_model: str
    shadow_model: str
    agree: bool | None = None
    score: float | None = None
    comparator: str
    reason: str
    detail: dict = Field(default_factory=dict, sa_column=Column(sa.JSON, nullable=False))
    error: str | None = None
    attempts: int = 1
    primary_latency_ms: float | None = None
    shadow_latency_ms: float | None = None
    primary_input_tokens: int | None = None
    primary_output_tokens: int | None = None
    primary_cost_usd: float | None = None
    shadow_input_tokens: int | None = None
    shadow_output_tokens: int | None = None
    shadow_cost_usd: float | None = None
    shadow_via: str | None = None  # "batch" for a Message Batches shadow (priced at its discount)
    rung: str | None = None  # the model compared with the reference (null before revision 0012)
    judge_model: str | None = None
    judge_input_tokens: int | None = None
    judge_output_tokens: int | None = None
    judge_cost_usd: float | None = None
    request_hash: str
    primary_hash: str
    shadow_hash: str | None = None
    request_excerpt: str | None = None
    primary_excerpt: str | None = None
    shadow_excerpt: str | None = None
    # When production made the call: stable across redelivery, the partition key on PostgreSQL.
    requested_at: dt.datetime = Field(sa_column=Column(sa.DateTime(timezone=True), nullable=False))
    created_at: dt.datetime = _ts(index=True)


class RouteChange(SQLModel, table=True):
    __tablename__ = "route_change"

    id: int | None = Field(default=None, primary_key=True)
    category: str = Field(index=True)
    from_model: str
    to_model: str
    rule: str
    reason: str
    agreement: float | None = None
    samples: int | None = None
    numbers: dict = Field(default_factory=dict, sa_column=Column(sa.JSON, nullable=False))
    actor: str = "auto"
    applied: bool = Field(default=True, sa_column_kwargs={"server_default": sa.true()})
    trigger_job_id: str | None = None
    created_at: dt.datetime = _ts(index=True)


def _tokens() -> Any:
    return Field(default=0, sa_type=sa.BigInteger, sa_column_kwargs={"server_default": "0"})


class Traffic(SQLModel, table=True):
    """Production calls per category, served model and minute, folded from Redis by beat."""

    category: str = Field(primary_key=True)
    minute: dt.datetime = Field(sa_column=Column(sa.DateTime(timezone=True), primary_key=True))
    model: str = Field(primary_key=True)
    calls: int = 0
    guarded: int = 0  # sent to the reference because the routed model could not take them
    # What the calls used, measured (every call, not the sampled ones), and its price.
    input_tokens: int = _tokens()
    output_tokens: int = _tokens()
    cache_write_tokens: int = _tokens()
    cache_read_tokens: int = _tokens()
    cost_usd: float | None = None  # priced with the policy in force when folded
    reference_cost_usd: float | None = None  # the same tokens at the category's reference's prices


LATENCY_BUCKETS = 24  # bucket b holds latencies up to 8 ms · 2^(b/2); the last one everything above


class Rollup(SQLModel, table=True):
    """Samples per (grain, category, period, models, kind): what every time-series panel reads.

    ``grain`` is ``1m``, ``5m`` or ``1h``: a panel reads the coarsest that its range still
    shows well, so its cost depends on the periods shown, not on the samples behind them.
    Written in the same transaction as the samples it counts (only rows actually
    inserted), so redelivery never counts twice and a sample is in the period of its
    ``created_at``.
    """

    __table_args__ = (sa.Index("ix_rollup_grain_at", "grain", "at"),)

    grain: str = Field(primary_key=True)
    category: str = Field(primary_key=True)
    at: dt.datetime = Field(sa_column=Column(sa.DateTime(timezone=True), primary_key=True))
    served_model: str = Field(primary_key=True)
    shadow_model: str = Field(primary_key=True)
    kind: str = Field(primary_key=True)
    samples: int = 0
    agreements: int = 0
    disagreements: int = 0
    errors: int = 0
    skipped: int = 0
    primary_input_tokens: int = 0
    primary_output_tokens: int = 0
    primary_cost_usd: float = 0.0
    shadow_input_tokens: int = 0
    shadow_output_tokens: int = 0
    shadow_cost_usd: float = 0.0
    judge_cost_usd: float = 0.0


for _side in ("primary", "shadow"):
    for _b in range(LATENCY_BUCKETS):
        Rollup.__table__.append_column(sa.Column(f"{_side}_lat_{_b:02d}", sa.Integer, nullable=False,
                                                 server_default="0"))


class RollupError(SQLModel, table=True):
    """Errors per (grain, category, period, error kind)."""

    __tablename__ = "rollup_error"
    __table_args__ = (sa.Index("ix_rollup_error_grain_at", "grain", "at"),)

    grain: str = Field(primary_key=True)
    category: str = Field(primary_key=True)
    at: dt.datetime = Field(sa_column=Column(sa.DateTime(timezone=True), primary_key=True))
    error: str = Field(primary_key=True)
    count: int = 0


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
    if session.get_bind().dialect.name == "postgresql":
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


class Event(SQLModel, table=True):
    """Something on-call should hear about; ``key`` makes it happen once."""

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(sa_column=Column(sa.String, nullable=False, unique=True))
    kind: str = Field(index=True)
    category: str | None = Field(default=None, index=True)
    severity: str
    summary: str
    details: dict = Field(default_factory=dict, sa_column=Column(sa.JSON, nullable=False))
    route_change_id: int | None = None
    created_at: dt.datetime = _ts(index=True)


class Alert(SQLModel, table=True):
    """Outbox row: one event for one channel, delivered until the channel accepts it."""

    __table_args__ = (sa.UniqueConstraint("event_id", "channel", name="uq_alert_event_channel"),)

    id: int | None = Field(default=None, primary_key=True)
    event_id: int = Field(index=True)
    channel: str
    status: str = Field(default="pending", index=True)  # pending | sending | delivered | failed
    attempts: int = 0
    last_error: str | None = None
    next_attempt_at: dt.datetime = _ts()
    lease_until: dt.datetime | None = Field(
        default=None, sa_column=Column(sa.DateTime(timezone=True), nullable=True))
    delivered_at: dt.datetime | None = Field(
        default=None, sa_column=Column(sa.DateTime(timezone=True), nullable=True))
    created_at: dt.datetime = _ts()


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


def _alembic_config(engine: Engine) -> Any:
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
        command.upgrade(_alembic_config(engine), revision)
        return
    # Session-level lock on an autocommit connection: no transaction left idle meanwhile.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as lock:
        lock.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": UPGRADE_LOCK})
        try:
            command.upgrade(_alembic_config(engine), revision)
        finally:
            lock.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": UPGRADE_LOCK})


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config(None)).get_current_head()  # type: ignore[arg-type]


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
