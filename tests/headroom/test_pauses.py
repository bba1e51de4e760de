"""Shadows yield to production's rate limits: a 429 pauses every shadow to that model."""

import datetime as dt
import threading
import time

import anthropic
import httpx2
import pytest
import redis
import sqlalchemy as sa
from sqlmodel import select

import tierguard
from tests.helpers import API_KEY, last_json, samples, tg, wait_until
from tierguard.headroom import pauses
from tierguard.store.db import make_engine, session
from tierguard.store.tables import Sample

LABELS = ["POSITIVE", "NEGATIVE", "NEUTRAL"]
CATS = {"a": {"kind": "label", "labels": LABELS, "agreement": 1.0},
        "b": {"kind": "label", "labels": LABELS, "agreement": 1.0}}
POLICY = {"defaults": {"sample_rate": 1.0},
          "categories": {"a": {"comparator": {"type": "label", "labels": LABELS}},
                         "b": {"comparator": {"type": "label", "labels": LABELS}, "start_on": "reference"}}}


def call(client, category, i):
    return client.messages.create(category=category, max_tokens=8, system=f"{category}: label it",
                                  messages=[{"role": "user", "content": f"item {i}"}])


def rows(url, category):
    with session(make_engine(url)) as s:
        return list(s.exec(select(Sample).where(Sample.category == category)))


def test_a_production_429_pauses_the_shadows_to_that_model_only(stack, simulator, sqlite_url, redis_url):
    sim = simulator(categories=CATS)
    stack.configure(policy=POLICY, database_url=sqlite_url, base_url=sim.base_url)
    stack.start_worker(concurrency=4)
    client = tierguard.ShadowedAnthropic(anthropic.Anthropic(max_retries=0))
    httpx2.post(sim.base_url + "/_sim/fail", json={"status": 429, "count": 1, "retry_after": 8})
    with pytest.raises(anthropic.RateLimitError):
        call(client, "b", 0)  # production on the reference (Opus) is rate-limited
    wait_until(lambda: client.tierguard_stats().get("shadow_pauses_sent") == 1, 5, "the pause sent")
    assert pauses.paused(redis.Redis.from_url(redis_url), ["claude-opus-4-7", "claude-haiku-4-5"]).keys() == {
        "claude-opus-4-7"}
    r = redis.Redis.from_url(redis_url)
    [until] = pauses.paused(r, ["claude-opus-4-7"]).values()
    for i in range(5):
        call(client, "a", i)  # served by Haiku: shadows to Opus wait
        call(client, "b", 100 + i)  # served by Opus: shadows to Haiku go at once
    client.tierguard_flush(5)
    wait_until(lambda: len(rows(sqlite_url, "b")) == 5, 10, "b's shadows, not paused")
    if pauses.paused(r, ["claude-opus-4-7"]):  # still within the pause: none of a's yet
        assert rows(sqlite_url, "a") == []
    wait_until(lambda: len(rows(sqlite_url, "a")) == 5, 30, "a's shadows after the pause")
    recorded = rows(sqlite_url, "a")
    assert {(x.error, x.attempts, x.agree) for x in recorded} == {(None, 1, True)}  # no attempt spent
    assert min(x.created_at.replace(tzinfo=dt.UTC).timestamp() for x in recorded) >= until
    client.tierguard_close()


def test_a_shadows_own_429_defers_it_without_spending_an_attempt(stack, simulator, sqlite_url, redis_url):
    worker_sim, production_sim = simulator(categories=CATS), simulator(categories=CATS)
    stack.configure(policy=POLICY, database_url=sqlite_url, base_url=worker_sim.base_url)
    stack.start_worker(concurrency=4)
    client = tierguard.ShadowedAnthropic(anthropic.Anthropic(base_url=production_sim.base_url,
                                                             api_key=API_KEY, max_retries=0))
    httpx2.post(worker_sim.base_url + "/_sim/fail", json={"status": 429, "count": 1, "retry_after": 2})
    call(client, "a", 1)
    client.tierguard_flush(5)
    wait_until(lambda: pauses.paused(redis.Redis.from_url(redis_url), ["claude-opus-4-7"]), 10, "paused")
    wait_until(lambda: samples(sqlite_url) == 1, 30, "the deferred shadow recorded")
    [row] = rows(sqlite_url, "a")
    assert row.error is None and row.attempts == 1
    client.tierguard_close()


def test_a_job_paused_past_max_defer_is_skipped_once(stack, simulator, sqlite_url, redis_url, tmp_path):
    sim = simulator(categories=CATS)
    stack.configure(policy={**POLICY, "shadow_headroom": {"max_defer_minutes": 0.02}},
                    database_url=sqlite_url, base_url=sim.base_url)
    stack.start_worker(concurrency=4)
    r = redis.Redis.from_url(redis_url)
    stop = threading.Event()

    def keep_paused():  # Opus stays rate-limited for as long as the test needs
        while not stop.is_set():
            pauses.pause(r, "claude-opus-4-7", 1.5)
            stop.wait(0.3)

    holder = threading.Thread(target=keep_paused)
    holder.start()
    try:
        client = tierguard.ShadowedAnthropic(anthropic.Anthropic(max_retries=0))
        call(client, "a", 7)
        client.tierguard_flush(5)
        wait_until(lambda: samples(sqlite_url) == 1, 30, "the job given up on")
    finally:
        stop.set()
        holder.join()
    [row] = rows(sqlite_url, "a")
    assert row.error == "skipped" and row.reason.startswith("rate_headroom: claude-opus-4-7 paused")
    time.sleep(3)
    with session(make_engine(sqlite_url)) as s:
        assert s.execute(sa.select(sa.func.count()).select_from(Sample)).scalar() == 1  # once
    client.tierguard_close()
    from tierguard.store.tables import Event

    with session(make_engine(sqlite_url)) as s:
        [event] = s.exec(select(Event).where(Event.kind == "shadows_paused")).all()
    assert event.summary.startswith("shadows to claude-opus-4-7 paused for over 0.02 min")
    status = last_json(tg("status", "--json", env=stack.env_for_cli(), cwd=tmp_path).stdout)
    opus = status["headroom"]["claude-opus-4-7"]
    assert opus["skipped_headroom"] == 1 and opus["deferred"] >= 1
    assert set(opus) >= {"requests", "input_tokens", "output_tokens", "paused_until", "deferred",
                         "skipped_headroom"}


def test_rate_limit_headers_are_read_and_malformed_ones_ignored():
    from tierguard.headroom.ratelimits import parse

    now = 1_000_000.0
    headers = {"anthropic-ratelimit-requests-limit": "100", "anthropic-ratelimit-requests-remaining": "40",
               "anthropic-ratelimit-requests-reset": "1970-01-12T13:47:00Z",
               "anthropic-ratelimit-tokens-limit": "1000", "anthropic-ratelimit-tokens-remaining": "900",
               "anthropic-ratelimit-input-tokens-limit": "x",
               "anthropic-ratelimit-input-tokens-remaining": "1",
               "anthropic-ratelimit-output-tokens-limit": "50",
               "anthropic-ratelimit-output-tokens-remaining": "5",
               "anthropic-ratelimit-output-tokens-reset": "?"}
    view = parse(headers, now)
    assert view["requests"] == (0.4, 1_000_020.0) and view["tokens"] == (0.9, now + 60)
    assert "input-tokens" not in view and "output-tokens" not in view  # malformed: left out
    assert parse({}, now) == {}


def test_shadows_wait_while_a_model_has_little_headroom_left(stack, simulator, sqlite_url, redis_url):
    from tierguard.headroom import ratelimits

    sim = simulator(categories=CATS)
    stack.configure(policy=POLICY, database_url=sqlite_url, base_url=sim.base_url)
    stack.start_worker(concurrency=4)
    r = redis.Redis.from_url(redis_url)
    # Production, through the gateway, sees Opus nearly exhausted (5 % left, resetting in 4 s).
    httpx2.post(sim.base_url + "/_sim/ratelimit",
                json={"model": "claude-opus-4-7", "limit": 100, "remaining": 5, "reset_in": 8})
    gateway = stack.start_gateway()
    production = anthropic.Anthropic(base_url=gateway, api_key=API_KEY, max_retries=0)
    production.messages.create(model="claude-opus-4-7", max_tokens=8, system="b: label it",
                               messages=[{"role": "user", "content": "x"}],
                               extra_headers={"x-tierguard-category": "b"})
    wait_until(lambda: ratelimits.view(r, "claude-opus-4-7").get("requests") == 0.05, 10,
               "the gateway's view of Opus in Redis")
    httpx2.post(sim.base_url + "/_sim/ratelimit",  # after the reset there is room again
                json={"model": "claude-opus-4-7", "limit": 100, "remaining": 90, "reset_in": 60})
    client = tierguard.ShadowedAnthropic(anthropic.Anthropic(base_url=sim.base_url, api_key=API_KEY,
                                                             max_retries=0))
    [(_, _, back)] = ratelimits.low(r, ["claude-opus-4-7"], 0.25).values()
    call(client, "a", 1)  # served by Haiku, shadowed on Opus: waits for the reset
    client.tierguard_flush(5)
    wait_until(lambda: len(rows(sqlite_url, "a")) == 1, 30, "the shadow after the reset")
    [row] = rows(sqlite_url, "a")
    assert row.error is None and row.attempts == 1
    # Not before the limit is back at the floor (0.25, refilling steadily from 5 % towards its reset).
    assert row.created_at.replace(tzinfo=dt.UTC).timestamp() >= back
    client.tierguard_close()


def test_a_long_pause_never_holds_a_job_past_the_visibility_timeout(engine, simulator, redis_url):
    """A 600 s pause: the jobs go back with countdowns under half the visibility timeout (a broker
    would deliver a held job twice after it), spending no attempt, calling no model."""
    from tests.pipeline.test_answers import job, paid
    from tierguard.pipeline import flow
    from tierguard.pipeline.context import Context
    from tierguard.pipeline.fanout import LoopRunner
    from tierguard.policy import parse_policy

    sim = simulator(categories={"labels": {"kind": "label", "labels": ["RED", "GREEN"]}})
    r = redis.Redis.from_url(redis_url)
    pauses.pause(r, "claude-opus-4-7", 600)
    ctx = Context(policy=parse_policy({"categories": {"labels": {}}}), engine=engine, redis=r,
                  runner=LoopRunner(lambda: anthropic.AsyncAnthropic(base_url=sim.base_url,
                                                                     api_key=API_KEY, max_retries=0)))
    after = flow.run(ctx, [job(i).to_dict() for i in range(20)], 3, max_attempts=6, retry_cap=30.0,
                     max_countdown=30.0)
    assert after.deferred == 20 and len(after.again) == 20 and paid(sim) == 0
    assert all(a.delay <= 30.0 and a.retries == 2 for a in after.again)
    assert all(a.job["deferred_since"] for a in after.again)  # the limit counts from the first deferral
