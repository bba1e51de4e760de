"""Adaptive sample rates: chosen by beat from each category's evidence, read with the routes.

:func:`refresh` (beat's monitor task, every ``TIERGUARD_MONITOR_SECONDS``) asks
:func:`tierguard.engine.sampling.choose` for every ``sampling: adaptive``
category, with its detector state (and its last evidence reset), its measured calls per day and the average
cost of its recent samples; the policy's global ``shadow_budget_usd_per_day``
scales the adaptive categories down together when their spend would pass it.
The rates go to Redis (:data:`tierguard.contract.keys.RATES`), where the wrappers' and
gateways' route refresh reads them. Fixed categories are never in that hash, and
a wrapper uses a rate from it only for a category its own policy calls adaptive.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import redis as redis_lib
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import select

from tierguard import metrics
from tierguard.contract import keys
from tierguard.engine.fingerprints import KEY as TRACKED
from tierguard.engine.fingerprints import last_reset
from tierguard.engine.sampling import Evidence, Rate, choose
from tierguard.policy import Policy
from tierguard.store.db import session, utcnow
from tierguard.store.tables import Category, Sample, Traffic

log = logging.getLogger(__name__)


def _evidence(engine: Engine, since: dt.datetime) -> tuple[dict[str, int], dict[str, float]]:
    with session(engine) as s:
        calls = dict(s.execute(sa.select(Traffic.category, sa.func.sum(Traffic.calls))
                               .where(Traffic.minute >= since).group_by(Traffic.category)).all())
        spent = s.execute(  # a sampled job's whole cost: its shadow, judge, probe, noise calls
            sa.select(Sample.category, Sample.kind,
                      sa.func.sum(sa.func.coalesce(Sample.shadow_cost_usd, 0)
                                  + sa.func.coalesce(Sample.judge_cost_usd, 0)), sa.func.count())
            .where(Sample.created_at >= since, Sample.kind.in_(("shadow", "probe", "noise", "challenger")),
                   Sample.error.is_(None))
            .group_by(Sample.category, Sample.kind)).all()
    total: dict[str, float] = {}
    jobs: dict[str, int] = {}
    for name, kind, usd, n in spent:
        total[name] = total.get(name, 0.0) + float(usd or 0)
        if kind == "shadow":
            jobs[name] = int(n)
    cost = {name: total[name] / jobs[name] for name in total if jobs.get(name)}
    return {k: int(v or 0) for k, v in calls.items()}, cost


def choose_all(engine: Engine, policy: Policy, now: dt.datetime | None = None) -> dict[str, Rate]:
    """The rate and reason of every adaptive category the database knows."""
    now = now or utcnow()
    with session(engine) as s:
        rows = list(s.exec(select(Category)))
    adaptive = [(row, cat) for row in rows if (cat := policy.category(row.name)).sampling == "adaptive"]
    if not adaptive:
        return {}
    calls, cost = _evidence(engine, now - dt.timedelta(days=1))
    out: dict[str, Rate] = {}
    for row, cat in adaptive:
        state = row.detector_state or {}
        last = state.get("last_change")
        reset = last_reset(state.get(TRACKED))
        ev = Evidence(statistic=cat.engine.statistic(state), samples=int(state.get("n", 0)),
                      seconds_since_change=None if last is None else now.timestamp() - float(last),
                      calls_per_day=calls.get(row.name), cost_per_sample_usd=cost.get(row.name),
                      seconds_since_reset=None if reset is None else now.timestamp() - reset[0],
                      reset=reset[1] if reset else "")
        out[row.name] = choose(cat.sampling_config, ev)
    budget = policy.shadow_budget_usd_per_day
    if budget is not None:
        spend = sum(r.rate * calls.get(n, 0) * cost.get(n, 0) for n, r in out.items())
        if spend > budget:
            scale = budget / spend
            out = {n: Rate(r.rate * scale, f"{r.reason}; scaled ×{scale:.2f} to keep all adaptive "
                                           f"categories under ${budget:g}/day")
                   for n, r in out.items()}
    return out


def refresh(engine: Engine, r: redis_lib.Redis, policy: Policy, now: dt.datetime | None = None
            ) -> dict[str, Rate]:
    """Choose the adaptive rates and publish them for the production side."""
    rates = choose_all(engine, policy, now)
    with session(engine) as s:  # the dashboard's copy; fixed categories show null
        s.execute(sa.update(Category).where(Category.name.not_in(list(rates)))
                  .where(Category.chosen_rate.is_not(None))
                  .values(chosen_rate=None, chosen_rate_reason=None))
        for name, x in rates.items():
            s.execute(sa.update(Category).where(Category.name == name)
                      .values(chosen_rate=x.rate, chosen_rate_reason=x.reason))
        s.commit()
    pipe = r.pipeline(transaction=True)
    pipe.delete(keys.RATES)
    if rates:
        pipe.hset(keys.RATES, mapping={n: f"{x.rate:.6g}|{x.reason}" for n, x in rates.items()})
    pipe.execute()
    for name, x in rates.items():
        metrics.SAMPLE_RATE.labels(name).set(x.rate)
    return rates


def entries(raw: dict[Any, Any]) -> dict[str, tuple[float, str]]:
    """An HGETALL of :data:`keys.RATES` as category -> (rate, reason); malformed entries skipped."""
    out: dict[str, tuple[float, str]] = {}
    for name, value in raw.items():
        try:
            rate, _, reason = value.decode().partition("|")
            out[name.decode()] = (float(rate), reason)
        except (ValueError, AttributeError):
            continue
    return out


def read(r: redis_lib.Redis) -> dict[str, tuple[float, str]]:
    """The published rates: category -> (rate, reason)."""
    return entries(r.hgetall(keys.RATES))


def parse_rates(raw: dict[Any, Any]) -> dict[str, float]:
    """The rates alone, from an HGETALL already done (the route refresh)."""
    return {name: rate for name, (rate, _) in entries(raw).items()}
