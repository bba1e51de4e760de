"""Adaptive sample rates: beat chooses them from the evidence, the production side follows."""

import datetime as dt
import random

import pytest
import redis
from sqlmodel import select

from tierguard.app.core import Core
from tierguard.config import get_settings
from tierguard.engine.detector import Situation
from tierguard.policy import parse_policy
from tierguard.routing.rates import read, refresh
from tierguard.routing.routes import ensure_categories
from tierguard.store.db import make_engine, session, upgrade
from tierguard.store.tables import Category, Traffic

POLICY = parse_policy({
    "defaults": {"sample_rate": 0.05, "min_samples": 20},
    "categories": {"steady": {"sampling": "adaptive", "sample_rate_min": 0.01, "sample_rate_max": 0.2},
                   "plain": {}}})


def set_evidence(engine, name, agreements, disagreements):
    cat = POLICY.category(name)
    state: dict = {}
    sit = Situation("candidate", pinned=False, now=1e9)
    for agree in [True] * agreements + [False] * disagreements:
        state, _ = cat.engine.update(state, agree, sit)
    with session(engine) as s:
        row = s.exec(select(Category).where(Category.name == name)).one()
        row.detector_state = state
        s.add(row)
        s.commit()


def share_sampled(core, name, n=20_000):
    cat, request = core.route(name, {"max_tokens": 8, "messages": []})
    random.seed(3)
    return sum(core.sampled(cat, request) for _ in range(n)) / n


def test_rates_follow_the_evidence_to_the_production_side(tmp_path, redis_url):
    url = f"sqlite:///{tmp_path / 'a.db'}"
    engine = make_engine(url)
    upgrade(engine)
    ensure_categories(engine, POLICY)
    r = redis.Redis.from_url(redis_url)
    core = Core(get_settings(redis_url=redis_url, database_url=url), POLICY, start_routes=False)
    core.routes.refresh()
    assert share_sampled(core, "steady") == pytest.approx(0.2, abs=0.015)  # nothing chosen yet: max

    set_evidence(engine, "steady", 200, 0)  # plenty of agreement: relax
    rates = refresh(engine, r, POLICY)
    assert rates["steady"].rate == 0.01 and rates["steady"].reason.startswith("healthy")
    assert set(read(r)) == {"steady"}  # a fixed category is never published
    with session(engine) as s:  # the dashboard's copy
        chosen = {c.name: (c.chosen_rate, c.chosen_rate_reason) for c in s.exec(select(Category))}
    assert chosen["steady"][0] == 0.01 and chosen["steady"][1].startswith("healthy")
    assert chosen["plain"] == (None, None)
    core.routes.refresh()
    assert share_sampled(core, "steady") == pytest.approx(0.01, abs=0.004)
    assert share_sampled(core, "plain") == pytest.approx(0.05, abs=0.008)  # the policy's, exactly

    set_evidence(engine, "steady", 200, 11)  # disagreements: the statistic passes the warning level
    rates = refresh(engine, r, POLICY)
    assert rates["steady"].rate == 0.2 and "drift suspected" in rates["steady"].reason
    core.routes.refresh()
    assert share_sampled(core, "steady") == pytest.approx(0.2, abs=0.015)
    core.close()


def test_the_global_budget_scales_adaptive_categories(tmp_path, redis_url):
    url = f"sqlite:///{tmp_path / 'b.db'}"
    engine = make_engine(url)
    upgrade(engine)
    policy = parse_policy({**POLICY.model_dump(exclude={"shadow_budget_usd_per_day"}),
                           "shadow_budget_usd_per_day": 1.0})
    ensure_categories(engine, policy)
    set_evidence(engine, "steady", 10, 0)  # thin evidence: it wants its maximum, 0.2
    now = dt.datetime.now(dt.UTC)
    from tierguard.store.tables import Sample

    with session(engine) as s:
        s.add(Traffic(category="steady", minute=now - dt.timedelta(hours=1), model="m", calls=10_000))
        s.add(Sample(job_id="j", category="steady", served_model="m", shadow_model="o", comparator="x",
                     reason="", request_hash="r", primary_hash="p", shadow_cost_usd=0.002, agree=True,
                     requested_at=now, created_at=now))
        s.commit()
    rates = refresh(engine, redis.Redis.from_url(redis_url), policy)
    # 10,000 calls/day × $0.002 × 0.2 = $4/day against $1: scaled to 0.05
    assert rates["steady"].rate == pytest.approx(0.05) and "scaled" in rates["steady"].reason
