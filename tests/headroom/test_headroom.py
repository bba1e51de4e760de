"""Shadows use only the room production leaves: the wrapper's headers, hard caps, a separate key."""

import hashlib
import os
import signal
import time

import anthropic
import httpx2
import redis
from sqlmodel import select

import tierguard
from tests.headroom.test_pauses import CATS, POLICY, call
from tests.helpers import API_KEY, last_json, samples, tg, wait_until, write_policy
from tierguard.config import get_settings
from tierguard.contract import keys
from tierguard.headroom import pauses, ratelimits
from tierguard.policy import parse_policy
from tierguard.store.db import make_engine, session
from tierguard.store.tables import Sample

OPUS = "claude-opus-4-7"
SHADOW_KEY = "sk-ant-shadow-" + "s" * 24


def recorded(url):
    with session(make_engine(url)) as s:
        return list(s.exec(select(Sample)))


def sim_stats(sim):
    return httpx2.get(sim.base_url + "/_sim/stats").json()


def test_the_wrapper_reads_production_headers_in_the_background(simulator, redis_url, sqlite_url,
                                                                monkeypatch):
    sim = simulator(categories=CATS, rate_limits={OPUS: {"requests_per_minute": 100}}, time_scale=0.001)
    settings = get_settings(redis_url=redis_url, database_url=sqlite_url)
    r = redis.Redis.from_url(redis_url)
    r.delete(keys.HEADROOM.format(model=OPUS))
    sdk = anthropic.Anthropic(base_url=sim.base_url, api_key=API_KEY, max_retries=0)
    client = tierguard.ShadowedAnthropic(sdk, settings=settings, policy=parse_policy(POLICY))
    for i in range(10):  # b is served by Opus
        message = call(client, "b", i)
        assert type(message) is anthropic.types.Message  # the SDK's own object, as before
    assert client.tierguard_flush(5)
    wait_until(lambda: ratelimits.view(r, OPUS).get("requests") is not None, 10, "production's view")
    assert 0.85 <= ratelimits.view(r, OPUS)["requests"] <= 0.91  # 90 of 100 left (headers of the last)
    # Instrumentation that patches the SDK's class (as tracing libraries do) still sees every call.
    seen = []
    real = anthropic.resources.messages.Messages.create
    monkeypatch.setattr(anthropic.resources.messages.Messages, "create",
                        lambda self, **kw: seen.append(kw) or real(self, **kw))
    other = tierguard.ShadowedAnthropic(sdk, settings=settings, policy=parse_policy(POLICY))
    call(other, "b", 99)
    assert len(seen) == 1 and seen[0]["model"] == OPUS
    client.tierguard_close()
    other.tierguard_close()


def test_caps_hold_across_two_workers_then_lift_with_the_policy(stack, simulator, postgres_url, tmp_path):
    sim = simulator(categories=CATS)
    capped = {**POLICY, "shadow_limits": {OPUS: {"requests_per_minute": 40}}}
    stack.configure(policy=capped, database_url=postgres_url, base_url=sim.base_url, policy_reload_s=0.5)
    client = tierguard.ShadowedAnthropic(anthropic.Anthropic(max_retries=0))
    stack.start_worker(concurrency=8, wait=False)
    stack.start_worker(concurrency=8, wait=False)
    stack.wait_ready()
    started = time.monotonic()
    for i in range(100):  # served by Haiku, shadowed on Opus; many small messages for both workers
        call(client, "a", i)
        time.sleep(0.03)
    assert client.tierguard_flush(10)
    wait_until(lambda: samples(postgres_url) >= 38, 30, "the capped share")
    time.sleep(max(0.0, 20 - (time.monotonic() - started)))  # 20 s into the minute
    opus_calls = sum(x["count"] for x in sim_stats(sim)["requests"] if x["model"] == OPUS)
    assert 38 <= opus_calls <= 42, opus_calls  # 40 a minute across both workers (within 5 %)
    assert samples(postgres_url) == opus_calls
    write_policy(tmp_path / "tierguard.yaml", POLICY)  # the cap lifted: the waiting jobs go
    wait_until(lambda: samples(postgres_url) == 100, 90, "every job recorded once the cap is lifted")
    rows = recorded(postgres_url)
    assert len({x.job_id for x in rows}) == 100
    assert {(x.error, x.attempts, x.agree) for x in rows} == {(None, 1, True)}  # waiting spent nothing
    busy = [log for log in stack.logs() if "succeeded in" in log]
    assert len(busy) == 2, "both workers should have taken jobs"
    client.tierguard_close()


def test_a_separate_shadow_key_has_its_own_headroom(stack, simulator, sqlite_url, tmp_path):
    sim = simulator(categories=CATS)
    own = {**POLICY, "shadow_headroom": {"follow_production": False}}  # a workspace of its own
    stack.configure(policy=own, database_url=sqlite_url, base_url=sim.base_url,
                    shadow_api_key=SHADOW_KEY, policy_reload_s=0.5)
    r = redis.Redis.from_url(stack.env["TIERGUARD_REDIS_URL"])
    stack.start_worker(concurrency=4)
    client = tierguard.ShadowedAnthropic(anthropic.Anthropic(max_retries=0))
    pauses.pause(r, OPUS, 30)  # production's key is rate-limited on Opus …
    call(client, "a", 1)
    client.tierguard_flush(5)
    wait_until(lambda: samples(sqlite_url) == 1, 15, "the shadow, on its own key")  # … shadows are not
    fp = hashlib.sha256(SHADOW_KEY.encode()).hexdigest()[:12]
    assert sim_stats(sim)["by_key"][fp][OPUS]["served"] == 1  # called with the shadow key
    assert ratelimits.fingerprint(SHADOW_KEY) == fp
    # Following production (the default), its pause holds them back too.
    write_policy(tmp_path / "tierguard.yaml", POLICY)
    time.sleep(1.5)
    call(client, "a", 2)
    client.tierguard_flush(5)
    time.sleep(4)
    assert samples(sqlite_url) == 1
    r.delete("tierguard:pause:" + OPUS)
    wait_until(lambda: samples(sqlite_url) == 2, 40, "the shadow after production's pause")
    status = last_json(tg("status", "--json", env=stack.env_for_cli(), cwd=tmp_path).stdout)
    assert status["headroom"][OPUS]["shadow_key"]["key"] == fp
    assert SHADOW_KEY not in "\n".join(stack.logs())
    client.tierguard_close()


def test_headroom_seen_by_one_worker_holds_another_and_a_kill_mid_deferral_loses_nothing(
        stack, simulator, postgres_url):
    sim = simulator(categories=CATS)
    stack.configure(policy=POLICY, database_url=postgres_url, base_url=sim.base_url,
                    visibility_timeout=5)
    client = tierguard.ShadowedAnthropic(anthropic.Anthropic(max_retries=0))
    first = stack.start_worker(concurrency=4)
    httpx2.post(sim.base_url + "/_sim/ratelimit",  # 1 % left, full in 45 s: back at 25 % in ~11 s
                json={"model": OPUS, "limit": 100, "remaining": 1, "reset_in": 45})
    call(client, "a", 0)
    client.tierguard_flush(5)
    wait_until(lambda: samples(postgres_url) == 1, 15, "the first shadow, which saw the headers")
    back = ratelimits.low(redis.Redis.from_url(stack.env["TIERGUARD_REDIS_URL"]), [OPUS], 0.25)[OPUS][2]
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    httpx2.post(sim.base_url + "/_sim/ratelimit",
                json={"model": OPUS, "limit": 100, "remaining": 90, "reset_in": 60})
    second = stack.start_worker(concurrency=4)  # another process: the same view, from Redis
    for i in range(1, 11):
        call(client, "a", i)
    client.tierguard_flush(5)
    wait_until(lambda: "deferred" in stack.logs()[1], 15, "the jobs deferred by the second worker")
    os.killpg(second.pid, signal.SIGKILL)  # killed while holding the deferred jobs
    second.wait()
    assert samples(postgres_url) == 1
    stack.start_worker(concurrency=4)
    r = redis.Redis.from_url(stack.env["TIERGUARD_REDIS_URL"])
    wait_until(lambda: samples(postgres_url) == 11, 60,
               lambda: f"every deferred job, once ({samples(postgres_url)} recorded; kombu's restore lock "
                       f"TTL {r.ttl('unacked_mutex')} s, {r.hlen('unacked')} unacked, "
                       f"queue {r.llen(stack.env.get('TIERGUARD_QUEUE', 'tierguard'))})")
    rows = recorded(postgres_url)
    assert len({x.job_id for x in rows}) == 11
    later = [x for x in rows if x.created_at.timestamp() >= back]
    assert len(later) == 10  # none before Opus's limit was back at the floor
    client.tierguard_close()
