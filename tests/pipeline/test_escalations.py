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


def test_an_escalation_demotion_counts_in_the_flap_guard(stack, simulator, sqlite_url, redis_url):
    from tierguard.engine.detector import fresh_state
    from tierguard.routing.routes import lock_category

    engine, _ = run(stack, simulator, sqlite_url, redis_url, 0.3)
    policy = parse_policy(POLICY)
    now = utcnow().timestamp()
    with session(engine) as s:  # two route changes in the last minutes: a third is a flap
        row = lock_category(s, policy.category("sentiment"))
        row.detector_state = {**fresh_state(), "changes": [now - 120, now - 60], "fingerprint": {"x": 1}}
        s.add(row)
        s.commit()
    [change] = watch(engine, redis.Redis.from_url(redis_url), policy)
    with session(engine) as s:
        row = s.get(Category, "sentiment")
    assert (change.rule, change.to_model, row.routed_model, row.pinned) == ("flap_guard", OPUS, OPUS, True)
    assert "flap guard: 3 changes within 24 h, pinned" in change.reason
    assert len(row.detector_state["changes"]) == 3 and row.detector_state["fingerprint"] == {"x": 1}
    with session(engine) as s:
        assert [e.kind for e in s.exec(select(Event))] == ["flap_guard"]


def test_a_rung_whose_shadow_answers_fail_their_checks_is_not_promoted(sqlite_url):
    import uuid

    from tierguard.compare import Verdict
    from tierguard.contract.job import ShadowJob
    from tierguard.pipeline.calls import Answer
    from tierguard.pipeline.recorder import record
    from tierguard.store.db import upgrade

    policy = parse_policy({"defaults": {"sample_rate": 0.0}, "categories": {"sentiment": {
        "comparator": {"type": "label", "labels": LABELS}, "escalate_on": ["truncated"],
        "start_on": "reference", "auto_promote": True, "cooldown_minutes": 0,
        "promote_min_samples": 50}}})
    engine = make_engine(sqlite_url)
    upgrade(engine)
    agree = Verdict(True, 1.0, "the same label")

    def feed(stop_reason):  # the reference serves; Haiku's shadow answer agrees (maybe cut short)
        job = ShadowJob(job_id=uuid.uuid4().hex, category="sentiment", served_model=OPUS,
                        shadow_model=HAIKU, request={"messages": []}, primary_text="POSITIVE")
        answer = Answer("POSITIVE", 1, 1, 1.0, stop_reason=stop_reason)
        return record(engine, None, policy, job, answer, agree, None, 1)

    for i in range(1000):  # agreement 100 %, but one answer in ten hits max_tokens
        outcome = feed("max_tokens" if i % 10 == 0 else "end_turn")
        assert outcome.change is None
    assert "20 of its last 200 shadow answers fail" in outcome.decision.reason
    promoted_at = None
    for i in range(1, 201):  # clean answers: held until a whole clean block replaces the last one
        outcome = feed("end_turn")
        if outcome.change is not None:
            promoted_at = i
            break
    assert promoted_at == 200 and outcome.change.rule == "promotion" and outcome.change.to_model == HAIKU
