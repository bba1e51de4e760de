"""The escalation watch on real parts: a cheap rung breaking 30 % of its answers through the SDK
wrapper (the simulator over HTTP) is counted in production, folded by beat's step, and demoted by
its escalation CUSUM with one audit row and one page; a healthy rung is not."""

import datetime as dt

import anthropic
import redis
from sqlmodel import select

import tierguard
from tierguard.pipeline.escalations import watch
from tierguard.policy import parse_policy
from tierguard.store.db import make_engine, session, utcnow
from tierguard.store.tables import Category, Event, RouteChange
from tierguard.store.traffic import fold

HAIKU, OPUS = "claude-haiku-4-5", "claude-opus-4-7"
LABELS = ["POSITIVE", "NEGATIVE", "NEUTRAL"]
POLICY = {"defaults": {"sample_rate": 0.0},
          "categories": {"sentiment": {"comparator": {"type": "label", "labels": LABELS},
                                       "escalate_on": ["invalid", "refusal", "empty"]}}}


def scenario(rate):
    return {"categories": {"sentiment": {"kind": "label", "labels": LABELS, "agreement": 1.0, "models": {
        HAIKU: {"agreement": 1.0, "broken": {"rate": rate, "kinds": ["invalid", "refusal", "empty"]}}}}}}


def run(stack, simulator, url, redis_url, rate, calls=200):
    sim = simulator(**scenario(rate))
    stack.configure(policy=POLICY, database_url=url, base_url=sim.base_url)
    client = tierguard.ShadowedAnthropic(anthropic.Anthropic(max_retries=0))
    try:
        for i in range(calls):
            client.messages.create(category="sentiment", system="sentiment: classify", max_tokens=8,
                                   messages=[{"role": "user", "content": f"message {i}"}])
        stats = client.tierguard_stats()
    finally:
        client.tierguard_close()  # the counters flushed to Redis
    engine = make_engine(url)
    later = utcnow() + dt.timedelta(minutes=3)  # the minutes closed: fold them now
    fold(engine, redis.Redis.from_url(redis_url), later, parse_policy(POLICY))
    return engine, stats


def test_a_rung_breaking_thirty_percent_is_demoted_once_with_one_page(stack, simulator, sqlite_url,
                                                                       redis_url):
    engine, stats = run(stack, simulator, sqlite_url, redis_url, 0.3)
    assert 40 <= stats["escalated"] <= 80  # every broken answer was replaced before the caller saw it
    policy = parse_policy(POLICY)
    changes = watch(engine, redis.Redis.from_url(redis_url), policy)
    assert len(changes) == 1 and changes[0].applied
    assert watch(engine, redis.Redis.from_url(redis_url), policy) == []  # each minute fed once
    with session(engine) as s:
        [change] = list(s.exec(select(RouteChange)))
        events = list(s.exec(select(Event).where(Event.kind == "demoted")))
        row = s.get(Category, "sentiment")
    assert (change.from_model, change.to_model, change.rule) == (HAIKU, OPUS, "escalations")
    assert change.reason.startswith(f"{HAIKU} breaks too many answers, so {OPUS} serves: escalation CUSUM")
    assert row.routed_model == OPUS and len(events) == 1 and events[0].severity == "critical"
    from tierguard.ops.status import category_status

    esc = category_status(engine, policy)["sentiment"]["escalations"]
    assert esc["checked"] == 200 and esc["escalated"] == stats["escalated"]
    assert set(esc["by_reason"]) == {"empty", "refusal", "truncated", "invalid"}
    assert esc["by_reason"]["truncated"] == 0 and 0.2 <= esc["rate"] <= 0.4


def test_a_healthy_rung_is_not_demoted(stack, simulator, sqlite_url, redis_url):
    engine, stats = run(stack, simulator, sqlite_url, redis_url, 0.0, calls=120)
    assert "escalated" not in stats
    assert watch(engine, redis.Redis.from_url(redis_url), parse_policy(POLICY)) == []
    with session(engine) as s:
        assert s.get(Category, "sentiment").routed_model == HAIKU
