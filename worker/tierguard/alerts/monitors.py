"""Periodic checks run by beat: monitor blind, backlog age, shadow error rate, noise floor, pin expiry.

Each check emits an event whose key names the episode, so a condition that
lasts pages once, not once a minute.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
from typing import Any

import redis as redis_lib
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from tierguard.alerts.events import emit, for_route_change
from tierguard.otlp import exporter as otlp
from tierguard.policy import CategoryPolicy, Policy
from tierguard.routing.routes import expire_pin, publish_quietly
from tierguard.store import traffic
from tierguard.store.db import session, utcnow
from tierguard.store.tables import Category, Sample

log = logging.getLogger(__name__)
NOISE_WINDOW = 500


def oldest_job(r: redis_lib.Redis, queue: str) -> tuple[str, dt.datetime] | None:
    """The job that has waited longest in the broker queue (kombu pushes left, pops right)."""
    raw = r.lindex(queue, -1)
    if raw is None:
        return None
    try:
        message = json.loads(raw)
        args = json.loads(base64.b64decode(message["body"]))[0]
        job = args[0]
        return job["job_id"], dt.datetime.fromisoformat(job["requested_at"])
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def check(engine: Engine, r: redis_lib.Redis | None, policy: Policy, queue: str,
          now: dt.datetime | None = None) -> int:
    """Run every check once; returns the number of new events."""
    now = now or utcnow()
    a = policy.alerts
    blind = dt.timedelta(minutes=a.blind_minutes)
    events = 0
    moved, expired = [], []
    with session(engine) as s:
        for row in s.exec(select(Category).where(Category.pinned).with_for_update()):
            change = expire_pin(s, row, now)
            if change is not None:
                moved.append(row)
                expired.append(change)
                events += for_route_change(s, policy, change, "pin_expired") is not None
        s.commit()
    publish_quietly(r, moved)
    otlp.recorded(changes=expired)
    seen = _traffic_or_empty(r, a.blind_minutes, now)
    with session(engine) as s:
        last = dict(s.execute(sa.select(Sample.category, sa.func.max(Sample.created_at))
                              .where(Sample.kind == "shadow").group_by(Sample.category)).all())
        for name, calls in sorted(seen.items()):
            cat = policy.category(name)
            expected = calls * cat.sample_rate
            at = last.get(name)
            if at is not None and at.tzinfo is None:
                at = at.replace(tzinfo=dt.UTC)
            if expected < 3 or (at is not None and now - at < blind):
                continue
            since = "ever" if at is None else f"since {at.isoformat(timespec='seconds')}"
            events += emit(
                s, policy, key=f"monitor_blind:{name}:{at.isoformat() if at else 'never'}",
                kind="monitor_blind", category=name,
                summary=f"{name}: monitor blind — {calls} production calls in {a.blind_minutes:g} "
                        f"min but no shadow sample {since}",
                numbers={"production_calls": calls, "expected_samples": round(expected, 1),
                         "minutes": a.blind_minutes},
                did="Nothing: without samples tierguard cannot see quality, so it cannot demote.",
                actions=["check that `tierguard worker` is running and can reach Redis, the "
                         "database and the model API", "tierguard status"]) is not None
        job = oldest_job(r, queue) if r is not None else None
        if job is not None and now - job[1] > blind:
            age = (now - job[1]).total_seconds() / 60
            events += emit(
                s, policy, key=f"backlog:{job[0]}", kind="monitor_blind", category=None,
                summary=f"shadow backlog: the oldest queued job has waited {age:.0f} min",
                numbers={"oldest_minutes": round(age, 1),
                         "queued": _safe(lambda: r.llen(queue))},
                did="Nothing: decisions lag production by at least that much.",
                actions=["add worker concurrency or processes (README: sizing)",
                         "check the workers' logs for model API errors"]) is not None
        window = now - dt.timedelta(minutes=a.error_window_minutes)
        # Skipped jobs (the shadow model cannot take the request) are not failures.
        rows = s.execute(sa.select(Sample.category, sa.func.count(),
                                   sa.func.count(Sample.error))
                         .where(Sample.kind == "shadow", Sample.created_at >= window,
                                sa.or_(Sample.error.is_(None), Sample.error != "skipped"))
                         .group_by(Sample.category)).all()
        for name, n, errors in rows:
            if n >= 20 and errors / n > a.error_rate_limit:
                hour = now.strftime("%Y-%m-%dT%H")
                events += emit(
                    s, policy, key=f"error_rate:{name}:{hour}", kind="error_rate", category=name,
                    summary=f"{name}: {errors}/{n} shadow calls failed in the last "
                            f"{a.error_window_minutes:g} min ({errors / n:.0%} > "
                            f"{a.error_rate_limit:.0%}); the monitor is partly blind",
                    numbers={"errors": errors, "samples": n, "limit": a.error_rate_limit},
                    did="Errors are recorded, never counted as disagreements; decisions slow down.",
                    actions=["tierguard status", "check the model API status and rate limits"]
                ) is not None
        s.commit()
    with session(engine) as s:
        names = s.execute(sa.select(Sample.category).where(Sample.kind == "noise").distinct())
        for name in sorted(names.scalars()):
            cat = policy.category(name)
            self_agree, n = self_agreement(s, name)
            warning = noise_warning(cat, self_agree, n)
            if warning is None:
                continue
            events += emit(s, policy, key=f"noise_floor:{name}:{now.date()}", kind="noise_floor",
                           category=name, summary=f"{name}: {warning}",
                           numbers={"self_agreement": self_agree, "threshold": cat.threshold},
                           did="Nothing: decisions continue on this threshold.",
                           actions=[f"lower the threshold of {name} or use a more tolerant "
                                    "comparator (policy file)"]) is not None
        s.commit()
    return events


def self_agreement(s: Session, category: str) -> tuple[float | None, int]:
    """Reference-vs-reference agreement over the last ``NOISE_WINDOW`` noise-floor samples."""
    recent = (sa.select(Sample.agree).where(Sample.category == category, Sample.kind == "noise",
                                            Sample.agree.is_not(None))
              .order_by(Sample.created_at.desc()).limit(NOISE_WINDOW).subquery())
    n, agree = s.execute(sa.select(sa.func.count(),
                                   sa.func.sum(sa.cast(recent.c.agree, sa.Integer)))).one()
    return (None if not n else agree / n), int(n)


def noise_warning(cat: CategoryPolicy, self_agree: float | None, n: int) -> str | None:
    """Why the threshold measures the reference's own noise, or None when it does not."""
    if self_agree is None or n < 50 or self_agree >= cat.healthy_level:
        return None
    return (f"the reference agrees with itself only {self_agree:.1%} of the time: "
            f"threshold {cat.threshold:.0%} measures noise, not quality")


def _safe(fn: Any) -> Any:
    try:
        return fn()
    except redis_lib.RedisError:
        return None


def _traffic_or_empty(r: redis_lib.Redis | None, minutes: float, now: dt.datetime) -> dict[str, int]:
    if r is None:
        return {}
    try:
        return traffic.calls_per_category(r, minutes, now)
    except redis_lib.RedisError as err:
        log.warning("cannot read production traffic counts from Redis: %s", err)
        return {}
