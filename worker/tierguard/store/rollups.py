"""Rollups, maintained in the writer's transaction: counts, sums and latency histograms per period.

The recorder calls :func:`add` with the sample rows it has just inserted (never
the duplicates it skipped), in the same transaction, so a rollup always equals
the raw aggregate of its samples: redelivered jobs are not counted twice, and a
sample counts in the minute and hour of its ``created_at``. Upserts add to the
rows in key order, so concurrent writers never deadlock.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from tierguard.store.db import dialect_insert, execute_many
from tierguard.store.tables import LATENCY_BUCKETS, Rollup, RollupError

GRAINS = {"1m": 60, "5m": 300, "1h": 3600}  # dashboards read 1m up to 6 h, 5m up to 3 days
SUMS = ("samples", "agreements", "disagreements", "errors", "skipped", "primary_input_tokens",
        "primary_output_tokens", "primary_cost_usd", "shadow_input_tokens", "shadow_output_tokens",
        "shadow_cost_usd", "judge_cost_usd")
KEY = ("grain", "category", "at", "served_model", "shadow_model", "kind")


def latency_bucket(ms: float) -> int:
    """0 for ≤ 8 ms, then one bucket per factor √2 (bucket b ends at 8·2^(b/2) ms)."""
    if ms <= 8:
        return 0
    return min(LATENCY_BUCKETS - 1, math.ceil(2 * math.log2(ms / 8) - 1e-9))  # an edge is its own bucket


def bucket_end_ms(b: int) -> float:
    return 8 * 2 ** (b / 2)


def _period(at: dt.datetime, seconds: int) -> dt.datetime:
    if at.tzinfo is None:
        at = at.replace(tzinfo=dt.UTC)
    return dt.datetime.fromtimestamp(int(at.timestamp()) // seconds * seconds, dt.UTC)


def accumulate(samples: Iterable[dict[str, Any]]) -> tuple[list[dict], list[dict]]:
    """(rollup rows, rollup_error rows) for sample rows, both grains, sorted by key."""
    rows: dict[tuple, dict[str, Any]] = {}
    errors: dict[tuple, int] = {}
    periods: dict[tuple[int, int], dt.datetime] = {}
    for x in samples:
        counts, error = _counts(x)
        at_s = _seconds(x["created_at"])
        for grain, seconds in GRAINS.items():
            start = at_s // seconds * seconds
            at = periods.get((start, seconds))
            if at is None:
                at = periods[(start, seconds)] = dt.datetime.fromtimestamp(start, dt.UTC)
            key = (grain, x["category"], at, x["served_model"], x["shadow_model"], x.get("kind") or "shadow")
            r = rows.get(key)
            if r is None:
                r = rows[key] = dict(zip(KEY, key, strict=True), **dict.fromkeys(SUMS, 0))
            for name, value in counts:
                r[name] = r.get(name, 0) + value
            if error:
                ekey = (grain, x["category"], at, error)
                errors[ekey] = errors.get(ekey, 0) + 1
    error_rows = [{"grain": g, "category": c, "at": at, "error": e, "count": n}
                  for (g, c, at, e), n in sorted(errors.items())]
    return [rows[k] for k in sorted(rows)], error_rows


def _seconds(at: dt.datetime) -> int:
    """A sample's ``created_at`` in whole epoch seconds (naive: UTC), as :func:`_period` reads it."""
    return int((at if at.tzinfo is not None else at.replace(tzinfo=dt.UTC)).timestamp())


def _counts(x: dict[str, Any]) -> tuple[list[tuple[str, Any]], Any]:
    """(what one sample adds to its rollup rows: column, amount; its error), the same for every
    grain: worked out once per sample, not once per grain."""
    error = x.get("error")
    agree = x.get("agree")
    outcome = ("skipped" if error == "skipped" else "errors" if error else "agreements" if agree is True
               else "disagreements" if agree is False else None)
    counts: list[tuple[str, Any]] = [("samples", 1)]
    if outcome is not None:
        counts.append((outcome, 1))
    counts += [(name, x.get(name) or 0) for name in SUMS[5:]]
    for side in ("primary", "shadow"):
        ms = x.get(f"{side}_latency_ms")
        if ms is not None:
            counts.append((f"{side}_lat_{latency_bucket(ms):02d}", 1))
    return counts, error


def add(s: Session, samples: list[dict[str, Any]]) -> None:
    """Add ``samples`` (rows just inserted into ``sample``) to the rollups, in ``s``'s transaction."""
    if not samples:
        return
    rows, error_rows = accumulate(samples)
    stmt, estmt, columns = _upserts(s.get_bind().dialect.name)
    zeros = dict.fromkeys(columns, 0)
    execute_many(s, "rollup_add", stmt, [{**zeros, **r} for r in rows])
    if error_rows:
        execute_many(s, "rollup_error_add", estmt, error_rows)


@functools.cache
def _upserts(dialect: str) -> tuple[Any, Any, tuple[str, ...]]:
    """(the rollup upsert, the rollup_error upsert, the rollup's summed columns) for ``dialect``,
    built once: their ~60 ``column + excluded.column`` expressions cost milliseconds a transaction."""
    insert = dialect_insert(dialect)
    table, etable = Rollup.__table__, RollupError.__table__
    columns = tuple(c.name for c in table.c if c.name not in KEY)
    stmt = insert(table)
    stmt = stmt.on_conflict_do_update(index_elements=list(KEY),
                                      set_={c: table.c[c] + stmt.excluded[c] for c in columns})
    estmt = insert(etable)
    estmt = estmt.on_conflict_do_update(index_elements=["grain", "category", "at", "error"],
                                        set_={"count": etable.c.count + estmt.excluded.count})
    return stmt, estmt, columns


def rebuild(s: Session, since: dt.datetime | None = None) -> int:
    """Recompute the rollups from the raw samples (all, or from ``since``'s hour): for migrations
    and repairs. Returns the samples read (-1 on PostgreSQL, where SQL does it in one pass)."""
    from tierguard.store.tables import Sample

    if s.get_bind().dialect.name == "postgresql":
        rebuild_sql(s, since)
        return -1
    start = _period(since, 3600) if since else None
    for t in (Rollup.__table__, RollupError.__table__):
        q = sa.delete(t)
        s.execute(q.where(t.c.at >= start) if start else q)
    cols = [Sample.__table__.c[n] for n in ("category", "served_model", "shadow_model", "kind", "agree",
                                           "error", "created_at", "primary_latency_ms",
                                           "shadow_latency_ms", *SUMS[5:])]
    q = sa.select(*cols).where(Sample.kind != "replay")
    if start:
        q = q.where(Sample.created_at >= start)
    n = 0
    batch: list[dict[str, Any]] = []
    for row in s.execute(q.execution_options(yield_per=20_000)).mappings():
        batch.append(dict(row))
        if len(batch) >= 20_000:
            add(s, batch)
            n += len(batch)
            batch = []
    add(s, batch)
    return n + len(batch)


def rebuild_sql(s: Session, since: dt.datetime | None = None) -> None:
    """:func:`rebuild` in one pass of SQL on PostgreSQL (millions of rows: seconds, not minutes)."""
    from tierguard.store.tables import LATENCY_BUCKETS as N

    start = _period(since, 3600) if since else None
    where = "kind <> 'replay'" + (" AND created_at >= :start" if start else "")
    for t in ("rollup", "rollup_error"):
        s.execute(sa.text(f"DELETE FROM {t}" + (" WHERE at >= :start" if start else "")),
                  {"start": start})

    def bucket(col: str) -> str:
        return (f"CASE WHEN {col} IS NULL THEN NULL WHEN {col} <= 8 THEN 0 ELSE "
                f"LEAST({N - 1}, CEIL(2 * ln({col} / 8.0) / ln(2.0) - 1e-9)::int) END")

    lat = [f"{side}_lat_{b:02d}" for side in ("primary", "shadow") for b in range(N)]
    lat_sums = [f"count(*) FILTER (WHERE {side[0]}b = {b})" for side in ("primary", "shadow")
                for b in range(N)]
    sums = ", ".join(f"COALESCE(SUM({c}), 0)" for c in SUMS[5:])
    for grain, seconds in GRAINS.items():
        period = f"to_timestamp(floor(extract(epoch from created_at) / {seconds}) * {seconds})"
        s.execute(sa.text(f"""
            INSERT INTO rollup (grain, category, at, served_model, shadow_model, kind, {", ".join(SUMS)},
                                {", ".join(lat)})
            SELECT '{grain}', category, {period}, served_model, shadow_model, kind, count(*),
                   count(*) FILTER (WHERE error IS NULL AND agree),
                   count(*) FILTER (WHERE error IS NULL AND NOT agree),
                   count(*) FILTER (WHERE error IS NOT NULL AND error <> 'skipped'),
                   count(*) FILTER (WHERE error = 'skipped'), {sums}, {", ".join(lat_sums)}
            FROM (SELECT *, {bucket("primary_latency_ms")} AS pb, {bucket("shadow_latency_ms")} AS sb
                  FROM sample WHERE {where}) s
            GROUP BY category, 3, served_model, shadow_model, kind"""), {"start": start})
        s.execute(sa.text(f"""
            INSERT INTO rollup_error (grain, category, at, error, count)
            SELECT '{grain}', category, {period}, error, count(*) FROM sample
            WHERE error IS NOT NULL AND {where} GROUP BY category, 3, error"""), {"start": start})
