"""Daily range partitions of ``sample`` on PostgreSQL, by ``requested_at``.

    sample (PARTITION BY RANGE (requested_at), primary key (job_id, requested_at))
     ├── sample_p20261130   [2026-11-30, 2026-12-01)   one per UTC day
     ├── sample_p20261201   ...
     └── sample_default     what no day partition takes (far past, far future)

``requested_at`` (when production made the call) is carried in the job, so a
redelivered job lands in the same partition and its primary key still dedupes it.
:func:`ensure` creates the days of the retention window and ``AHEAD_DAYS`` ahead
(rows a new partition's range takes are moved out of the default first);
:func:`drop_before` drops whole days past retention, and batched deletes clear the
default partition. SQLite has no partitions: :mod:`tierguard.store.maintenance` deletes.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

PREFIX = "sample_p"
DEFAULT = "sample_default"
AHEAD_DAYS = 7
_NAME = re.compile(r"^sample_p(\d{8})$")
_LOCK = 0x7469_6572  # pg_advisory_xact_lock key: one partition manager at a time


def is_child(name: str) -> bool:
    """A partition's table name (left out of schema comparisons)."""
    return name == DEFAULT or bool(_NAME.match(name))


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """Alembic's ``include_name``: partitions are not tables of the model."""
    return not (type_ == "table" and name is not None and is_child(name))


def day_of(value: dt.datetime) -> dt.date:
    return value.astimezone(dt.UTC).date() if value.tzinfo else value.date()


def _bounds(day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    lo = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
    return lo, lo + dt.timedelta(days=1)


def partitioned(bind: Engine | Connection) -> bool:
    if bind.dialect.name != "postgresql":
        return False
    sql = sa.text("SELECT relkind FROM pg_class WHERE oid = to_regclass('sample')")
    if isinstance(bind, Engine):
        with bind.connect() as conn:
            return conn.execute(sql).scalar() == "p"
    return bind.execute(sql).scalar() == "p"


def days(conn: Connection) -> dict[dt.date, str]:
    """The day partitions that exist, by day."""
    names = conn.execute(sa.text(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = to_regclass('sample')")).scalars()
    out = {}
    for name in names:
        m = _NAME.match(name)
        if m:
            out[dt.datetime.strptime(m.group(1), "%Y%m%d").date()] = name
    return out


def _create_default(conn: Connection) -> None:
    conn.execute(sa.text(f"CREATE TABLE IF NOT EXISTS {DEFAULT} PARTITION OF sample DEFAULT"))


def _create_day(conn: Connection, day: dt.date) -> str:
    lo, hi = _bounds(day)
    name = f"{PREFIX}{day:%Y%m%d}"
    params = {"lo": lo, "hi": hi}
    where = "requested_at >= :lo AND requested_at < :hi"
    stray = conn.execute(sa.text(f"SELECT EXISTS (SELECT 1 FROM {DEFAULT} WHERE {where})"),
                         params).scalar()
    # The default partition may not hold rows of a range given to a new partition.
    if stray:
        conn.execute(sa.text("CREATE TEMP TABLE tierguard_moved (LIKE sample)"))
        conn.execute(sa.text(f"WITH d AS (DELETE FROM {DEFAULT} WHERE {where} RETURNING *) "
                             "INSERT INTO tierguard_moved SELECT * FROM d"), params)
    conn.execute(sa.text(f"CREATE TABLE {name} PARTITION OF sample "
                         f"FOR VALUES FROM ('{lo.isoformat()}') TO ('{hi.isoformat()}')"))
    if stray:
        conn.execute(sa.text("INSERT INTO sample SELECT * FROM tierguard_moved"))
        conn.execute(sa.text("DROP TABLE tierguard_moved"))
    return name


def ensure_days(conn: Connection, wanted: set[dt.date]) -> list[str]:
    """Create the missing day partitions among ``wanted`` (and the default); their names."""
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK})
    _create_default(conn)
    have = days(conn)
    return [_create_day(conn, d) for d in sorted(wanted - set(have))]


def window(now: dt.datetime, samples_days: float) -> set[dt.date]:
    """The days from the one holding the retention cutoff to ``AHEAD_DAYS`` ahead."""
    today, first = day_of(now), day_of(now - dt.timedelta(days=samples_days))
    return {first + dt.timedelta(days=k) for k in range((today - first).days + AHEAD_DAYS + 1)}


def ensure(engine: Engine, now: dt.datetime, samples_days: float) -> list[str]:
    """The retention window's days and ``AHEAD_DAYS`` ahead exist; names created."""
    with engine.begin() as conn:
        return ensure_days(conn, window(now, samples_days))


def drop_before(engine: Engine, cutoff: dt.datetime, *, dry_run: bool) -> list[dict[str, Any]]:
    """Drop day partitions wholly before ``cutoff``: [{"partition", "rows"}] (rows counted first)."""
    out = []
    with engine.begin() as conn:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK})
        for day, name in sorted(days(conn).items()):
            if _bounds(day)[1] > cutoff:
                continue
            rows = int(conn.execute(sa.text(f"SELECT count(*) FROM {name}")).scalar_one())
            if not dry_run:
                conn.execute(sa.text(f"DROP TABLE {name}"))
            out.append({"partition": name, "rows": rows})
    return out


INDEXES = (
    ("ix_sample_category", "(category)", ""),
    ("ix_sample_created_at", "(created_at)", ""),
    ("ix_sample_category_created_at", "(category, created_at)", ""),
    ("ix_sample_disagreements", "(created_at)", " WHERE agree = false AND kind = 'shadow'"),
)


def convert(conn: Connection) -> int:
    """Turn a plain ``sample`` table into the partitioned one, keeping every row; rows moved."""
    conn.execute(sa.text("UPDATE sample SET requested_at = created_at WHERE requested_at IS NULL"))
    conn.execute(sa.text("ALTER TABLE sample ALTER COLUMN requested_at SET NOT NULL"))
    conn.execute(sa.text("ALTER TABLE sample RENAME TO sample_unpartitioned"))
    for name, _, _ in INDEXES:
        conn.execute(sa.text(f"DROP INDEX IF EXISTS {name}"))
    conn.execute(sa.text("ALTER TABLE sample_unpartitioned RENAME CONSTRAINT sample_pkey "
                         "TO sample_unpartitioned_pkey"))
    conn.execute(sa.text("CREATE TABLE sample (LIKE sample_unpartitioned INCLUDING DEFAULTS) "
                         "PARTITION BY RANGE (requested_at)"))
    conn.execute(sa.text("ALTER TABLE sample ADD CONSTRAINT sample_pkey "
                         "PRIMARY KEY (job_id, requested_at)"))
    for name, cols, where in INDEXES:
        conn.execute(sa.text(f"CREATE INDEX {name} ON sample {cols}{where}"))
    held = conn.execute(sa.text(
        "SELECT DISTINCT (requested_at AT TIME ZONE 'UTC')::date FROM sample_unpartitioned")).scalars()
    ensure_days(conn, set(held) | window(dt.datetime.now(dt.UTC), 0))
    moved = conn.execute(sa.text("INSERT INTO sample SELECT * FROM sample_unpartitioned")).rowcount
    conn.execute(sa.text("DROP TABLE sample_unpartitioned"))
    return int(moved)


def unconvert(conn: Connection) -> None:
    """Back to one plain table (the migration's downgrade)."""
    conn.execute(sa.text("CREATE TABLE sample_plain (LIKE sample INCLUDING DEFAULTS)"))
    conn.execute(sa.text("INSERT INTO sample_plain SELECT * FROM sample"))
    conn.execute(sa.text("DROP TABLE sample CASCADE"))
    conn.execute(sa.text("ALTER TABLE sample_plain RENAME TO sample"))
    conn.execute(sa.text("ALTER TABLE sample ADD CONSTRAINT sample_pkey PRIMARY KEY (job_id)"))
    for name, cols, where in INDEXES:
        conn.execute(sa.text(f"CREATE INDEX {name} ON sample {cols}{where}"))
