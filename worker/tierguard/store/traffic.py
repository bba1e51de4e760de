"""Production traffic counters: what the wrappers and gateways saw, per category, model and minute.

The production side adds to a Redis hash per epoch minute in the background
(:data:`tierguard.contract.keys.TRAFFIC`, fields ``category|model|metric``; a bare
``category`` field is an older wrapper's call count). Beat folds every closed
minute into the ``traffic`` table with SET semantics, so folding a minute twice
(two beats, a retry) stores the same numbers; minutes stay in Redis for a day.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from typing import Any

import redis as redis_lib
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tierguard.contract import keys
from tierguard.contract.messages import USAGE_FIELDS, usage_counts
from tierguard.store.db import session, upsert_insert, utcnow
from tierguard.store.tables import Traffic

TOKENS = ("input_tokens", "output_tokens", "cache_write_tokens", "cache_read_tokens")
ESCALATED = ("escalated_empty", "escalated_refusal", "escalated_truncated", "escalated_invalid")
# The escalated calls (the answer the caller got instead of a failing one) and their tokens, also
# in ``calls`` and TOKENS: their spend is shown apart.
ESCALATED_TOKENS = tuple(f"escalated_{t}" for t in TOKENS)
METRICS = ("calls", "guarded", *TOKENS, "checked", *ESCALATED, "escalated_calls", *ESCALATED_TOKENS)
_FIELD = dict(zip(TOKENS, USAGE_FIELDS, strict=True))  # metric -> the usage field it counts
KEEP_SECONDS = 24 * 3600
CLOSED_AFTER_MINUTES = 2  # flushes every few seconds land in the minute they are sent in


def tokens_of(usage: Any) -> dict[str, int]:
    """A Messages API ``usage`` (SDK object or JSON) as traffic metrics; junk counts as 0."""
    counts = usage_counts(usage)
    return {metric: counts[name] for metric, name in _FIELD.items()}


PRICES = ("cost_usd", "reference_cost_usd", "escalated_cost_usd")


def priced(policy: Any, category: str, model: str, counts: dict[str, int]) -> dict[str, float | None]:
    """What a (category, model) row's tokens cost, would have cost on the category's reference, and
    what its escalated calls' tokens cost."""
    if policy is None:
        return dict.fromkeys(PRICES)
    tokens = [counts[t] for t in TOKENS]
    return {"cost_usd": policy.cost_usd(model, *tokens),
            "reference_cost_usd": policy.cost_usd(policy.category(category).reference, *tokens),
            "escalated_cost_usd": policy.cost_usd(model, *[counts[t] for t in ESCALATED_TOKENS])}


def field(category: str, model: str, metric: str) -> str:
    return f"{category}|{model}|{metric}"


def parse(raw: dict[bytes, bytes]) -> Counter[tuple[str, str, str]]:
    """(category, model, metric) -> count, from one minute's hash."""
    out: Counter[tuple[str, str, str]] = Counter()
    for name, value in raw.items():
        parts = name.decode().split("|")
        key = (parts[0], "", "calls") if len(parts) == 1 else tuple(parts) if len(parts) == 3 else None
        if key is not None:
            out[key] += int(value)  # type: ignore[index]
    return out


def calls_per_category(r: redis_lib.Redis, minutes: float, now: dt.datetime) -> dict[str, int]:
    """Production calls per category over the last ``minutes``, from Redis."""
    start = int(now.timestamp() // 60)
    pipe = r.pipeline(transaction=False)
    for m in range(start - int(minutes) + 1, start + 1):
        pipe.hgetall(keys.TRAFFIC.format(minute=m))
    totals: Counter[str] = Counter()
    for raw in pipe.execute():
        for (category, _, metric), n in parse(raw).items():
            if metric == "calls":
                totals[category] += n
    return dict(totals)


def fold(engine: Engine, r: redis_lib.Redis, now: dt.datetime | None = None,
         policy: Any = None) -> int:
    """Copy every closed minute since the last one folded into ``traffic``; rows written.

    With ``policy`` each row is priced (``cost_usd``) from its tokens."""
    now = now or utcnow()
    last_open = int(now.timestamp() // 60) - CLOSED_AFTER_MINUTES
    with session(engine) as s:
        latest = s.execute(sa.select(sa.func.max(Traffic.minute))).scalar()
    oldest = int(now.timestamp() - KEEP_SECONDS) // 60
    if latest is not None:
        if latest.tzinfo is None:
            latest = latest.replace(tzinfo=dt.UTC)
        oldest = max(oldest, int(latest.timestamp() // 60))  # the latest folded minute again: cheap
    minutes = list(range(oldest, last_open + 1))
    if not minutes:
        return 0
    pipe = r.pipeline(transaction=False)
    for m in minutes:
        pipe.hgetall(keys.TRAFFIC.format(minute=m))
    rows: dict[tuple[str, dt.datetime, str], dict[str, int]] = {}
    for m, raw in zip(minutes, pipe.execute(), strict=True):
        at = dt.datetime.fromtimestamp(m * 60, dt.UTC)
        for (category, model, metric), n in parse(raw).items():
            if metric in METRICS:
                rows.setdefault((category, at, model), dict.fromkeys(METRICS, 0))[metric] = n
    if not rows:
        return 0
    values = [{"category": c, "minute": at, "model": model, **counts, **priced(policy, c, model, counts)}
              for (c, at, model), counts in rows.items()]
    with session(engine) as s:
        stmt = upsert_insert(s)(Traffic.__table__)
        stmt = stmt.on_conflict_do_update(index_elements=["category", "minute", "model"],
                                          set_={m: stmt.excluded[m] for m in (*METRICS, *PRICES)})
        s.execute(stmt, values)
        s.commit()
    return len(values)


def totals(engine: Engine, since: dt.datetime) -> dict[str, dict[str, int]]:
    """category -> {calls, guarded, checked, escalated_REASON…} over folded minutes since ``since``."""
    names = ("calls", "guarded", "checked", *ESCALATED)
    with session(engine) as s:
        rows = s.execute(sa.select(Traffic.category, *(sa.func.sum(getattr(Traffic, n)) for n in names))
                         .where(Traffic.minute >= since).group_by(Traffic.category)).all()
    return {row[0]: {n: int(v or 0) for n, v in zip(names, row[1:], strict=True)} for row in rows}


def escalations(counts: dict[str, int]) -> dict[str, object]:
    """``{"checked", "escalated", "rate", "by_reason"}`` from a category's :func:`totals`."""
    by_reason = {n.removeprefix("escalated_"): counts.get(n, 0) for n in ESCALATED}
    checked, escalated = counts.get("checked", 0), sum(by_reason.values())
    return {"checked": checked, "escalated": escalated,
            "rate": escalated / checked if checked else None, "by_reason": by_reason}
