"""Rate-limit headroom over time, for the dashboard: Redis's latest views copied per minute.

The live views (:mod:`tierguard.headroom.ratelimits`) and pauses (:mod:`tierguard.headroom.pauses`)
live in Redis and expire; beat's monitor task copies them into ``headroom`` once
per run, one row per (minute, model, key), so Grafana can draw what room
production left and when shadows waited. ``key`` is ``""`` for production's view
(and shadows sharing its key), a shadow key's fingerprint for its own.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable
from typing import Any

import redis as redis_lib
from sqlalchemy.engine import Engine

from tierguard.contract import keys
from tierguard.headroom import pauses, ratelimits
from tierguard.store.db import session, upsert_insert, utcnow
from tierguard.store.tables import Headroom

FAMILIES = ("requests", "input_tokens", "output_tokens", "tokens")  # columns, as ratelimits.view names them


def models_of(policy: Any) -> list[str]:
    """Every model a policy's categories serve, shadow or judge with."""
    out = {*policy.models.rungs, *policy.shadow_limits}
    for name in policy.categories:
        cat = policy.category(name)
        out |= set(cat.rungs)
        if cat.judge_model is not None:
            out.add(cat.judge_model)
    return sorted(out)


def snapshot(engine: Engine, r: redis_lib.Redis, models: Iterable[str], scope: str = "",
             now: dt.datetime | None = None) -> int:
    """Copy this minute's views of ``models`` (and of the shadow key ``scope``) into ``headroom``."""
    now = now or utcnow()
    minute = now.replace(second=0, microsecond=0)
    names = [(m, sc) for m in sorted(set(models)) for sc in sorted({"", scope})]
    scoped = [ratelimits.scoped(m, sc) for m, sc in names]
    held = pauses.paused(r, scoped, now=time.time())
    deferred = {k.decode(): int(v) for k, v in r.hgetall(keys.DEFERRED).items()}
    rows: list[dict[str, Any]] = []
    for (model, sc), name in zip(names, scoped, strict=True):
        view = ratelimits.view(r, name)
        if not view and name not in held and not (sc == "" and deferred.get(model)):
            continue
        rows.append({"minute": minute, "model": model, "key": sc, "paused": name in held,
                     "deferred": deferred.get(model, 0) if sc == "" else 0,
                     **{family: view.get(family) for family in FAMILIES}})
    if not rows:
        return 0
    with session(engine) as s:
        stmt = upsert_insert(s)(Headroom.__table__)
        update = {c: stmt.excluded[c] for c in (*FAMILIES, "paused", "deferred")}
        s.execute(stmt.on_conflict_do_update(index_elements=["minute", "model", "key"], set_=update),
                  rows)
        s.commit()
    return len(rows)
