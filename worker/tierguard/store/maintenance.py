"""One pass of everything periodic: fold production counters, partitions, retention.

Beat runs :func:`run` every ``TIERGUARD_MAINTAIN_SECONDS``; ``tierguard maintain``
runs it by hand (``--dry-run`` says what it would delete). Samples older than
``retention.samples_days`` go, rollups and traffic counters older than
``retention.rollups_days``; the audit tables (route changes, events, alerts) are
never pruned. On PostgreSQL ``sample`` is partitioned by day: the retention
window's partitions (and a week ahead) are created, whole days past retention
are dropped, and only the default partition is deleted from. Unlisted categories idle for
``unknown_category_ttl_days`` are forgotten. Elsewhere deletes
run in batches, each its own transaction, so a long prune never holds a lock the
writers need.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import redis as redis_lib
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tierguard.policy import Policy
from tierguard.store import partitions, traffic
from tierguard.store.db import session, utcnow
from tierguard.store.tables import Category, Headroom, Rollup, RollupError, Sample, Traffic

log = logging.getLogger(__name__)
BATCH = 10_000


def _prune(engine: Engine, table: Any, column: Any, key: list[Any], cutoff: dt.datetime,
           dry_run: bool) -> int:
    with session(engine) as s:
        if dry_run:
            return int(s.execute(sa.select(sa.func.count()).select_from(table)
                                 .where(column < cutoff)).scalar_one())
    deleted = 0
    while True:
        with session(engine) as s:
            old = sa.select(*key).where(column < cutoff).limit(BATCH)
            cond = (sa.tuple_(*key).in_(old) if len(key) > 1
                    else key[0].in_(old.scalar_subquery()))
            done = s.execute(sa.delete(table).where(cond)).rowcount
            s.commit()
        deleted += done
        if done < BATCH:
            return deleted


def forget_unlisted(engine: Engine, policy: Policy, now: dt.datetime, dry_run: bool = False) -> list[str]:
    """Unlisted categories without traffic for ``unknown_category_ttl_days`` (and not pinned):
    their rows go (their audit stays), so junk names cannot hold ``max_categories`` for good."""
    cutoff = now - dt.timedelta(days=policy.unknown_category_ttl_days)
    recent = sa.select(Traffic.category).where(Traffic.minute >= cutoff).distinct()
    with session(engine) as s:
        stale = [n for n in s.execute(
            sa.select(Category.name).where(Category.pinned.is_(False), Category.updated_at < cutoff,
                                           Category.name.not_in(recent))).scalars()
                 if n not in policy.categories]
        if stale and not dry_run:
            s.execute(sa.delete(Category).where(Category.name.in_(stale)))
            s.commit()
            log.info("maintenance: forgot %d unlisted categories idle for %g days", len(stale),
                     policy.unknown_category_ttl_days)
    return sorted(stale)


def run(engine: Engine, r: redis_lib.Redis | None, policy: Policy, *, dry_run: bool = False,
        now: dt.datetime | None = None) -> dict[str, Any]:
    """Fold, then prune; what was (or, dry, would be) done."""
    now = now or utcnow()
    folded = 0
    if r is not None and not dry_run:
        try:
            folded = traffic.fold(engine, r, now, policy)
        except Exception as err:  # partitions and retention still run
            log.warning("cannot fold production counters: %s", err)
    keep = policy.retention
    samples_cut = now - dt.timedelta(days=keep.samples_days)
    rollups_cut = now - dt.timedelta(days=keep.rollups_days)
    s, rl, re_, tr = (Sample.__table__, Rollup.__table__, RollupError.__table__, Traffic.__table__)
    hr = Headroom.__table__
    created: list[str] = []
    dropped: list[dict[str, Any]] = []
    if partitions.partitioned(engine):
        if not dry_run:
            created = partitions.ensure(engine, now, keep.samples_days)
        dropped = partitions.drop_before(engine, samples_cut, dry_run=dry_run)
        default = sa.table(partitions.DEFAULT, sa.column("job_id"), sa.column("requested_at"))
        samples = sum(d["rows"] for d in dropped) + _prune(
            engine, default, default.c.requested_at, [default.c.job_id], samples_cut, dry_run)
    else:
        samples = _prune(engine, s, s.c.created_at, [s.c.job_id], samples_cut, dry_run)
    pruned = {
        "sample": samples,
        "rollup": _prune(engine, rl, rl.c.at, [rl.c.grain, rl.c.category, rl.c.at, rl.c.served_model,
                                                rl.c.shadow_model, rl.c.kind], rollups_cut, dry_run),
        "rollup_error": _prune(engine, re_, re_.c.at, [re_.c.grain, re_.c.category, re_.c.at,
                                                      re_.c.error], rollups_cut, dry_run),
        "traffic": _prune(engine, tr, tr.c.minute, [tr.c.category, tr.c.minute, tr.c.model],
                          rollups_cut, dry_run),
        "headroom": _prune(engine, hr, hr.c.minute, [hr.c.minute, hr.c.model, hr.c.key], samples_cut,
                           dry_run),
    }
    if any(pruned.values()) and not dry_run:
        log.info("maintenance: pruned %s", pruned)
    if created:
        log.info("maintenance: created sample partitions %s", ", ".join(created))
    forgotten = forget_unlisted(engine, policy, now, dry_run)
    return {"dry_run": dry_run, "folded_traffic_rows": folded,
            ("categories_would_forget" if dry_run else "categories_forgotten"): forgotten,
            "partitions_created": created,
            ("partitions_would_drop" if dry_run else "partitions_dropped"): dropped,
            "samples_before": samples_cut.isoformat(), "rollups_before": rollups_cut.isoformat(),
            ("would_delete" if dry_run else "deleted"): pruned}
