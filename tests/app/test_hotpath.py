"""The wrapper's hot path (issue 30): a category's plan per route refresh, the call marked for the tap
without a header, an unsampled answer counted in one entry, the guard's one-pass fit."""

import json
import random
import threading
import time
import weakref

import anthropic
import httpx2
import pytest
import redis

import tierguard
from tests.app.test_client import SCENARIO, queued_jobs
from tests.app.test_fidelity import LISTED, wrapped
from tests.app.test_surface import ASK, HAIKU, OPUS, received
from tierguard.app.core import Core
from tierguard.app.publisher import HELD_WHILE, Publisher
from tierguard.config import get_settings
from tierguard.policy import parse_policy
from tierguard.policy.model_limits import fits, too_big
from tierguard.routing.routes import REDIS_KEY


def test_a_plan_lasts_until_the_next_route_refresh(redis_url, sqlite_url):
    core = Core(get_settings(redis_url=redis_url, database_url=sqlite_url), parse_policy(LISTED),
                start_routes=False)
    request = {"max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    assert core.route("sentiment", request)[1]["model"] == HAIKU  # first seen: the full path
    plan = core.plan("sentiment")
    assert plan is not None and plan.model == HAIKU and plan.rate == 1.0 and plan.mark.quick
    assert core.plan("sentiment") is plan  # one dict entry per call
    redis.Redis.from_url(redis_url).hset(REDIS_KEY, "sentiment", f"{OPUS}|2")
    assert core.route("sentiment", request)[1]["model"] == HAIKU  # until the routes are read again
    core.routes.refresh()
    assert core.plan("sentiment") is not plan
    assert core.route("sentiment", request)[1]["model"] == OPUS
    assert core.planned("sentiment", request).model == OPUS
    huge = {**request, "system": "x" * 800_000}  # too big for Haiku's context: never the plan alone
    redis.Redis.from_url(redis_url).hset(REDIS_KEY, "sentiment", f"{HAIKU}|3")
    core.routes.refresh()
    assert core.planned("sentiment", huge) is None
    assert core.route("sentiment", huge)[1]["model"] == OPUS  # the guard's choice, counted
    core.close()


def test_category_wins_over_a_default_header_which_never_goes_upstream(simulator, redis_url, sqlite_url):
    server = simulator(**SCENARIO)
    client = wrapped(server, redis_url, sqlite_url).with_options(
        default_headers={"X-Tierguard-Category": "other"})
    assert client.messages.create(category="sentiment", model=OPUS, **ASK).model == HAIKU
    assert client.messages.create(category="sentiment", extra_headers={"x-tierguard-category": "x"},
                                  **ASK).model == HAIKU
    assert client.messages.count_tokens(category="sentiment", model=OPUS, messages=ASK["messages"])
    assert client.tierguard_flush()
    assert [j["category"] for j in queued_jobs(redis_url)] == ["sentiment", "sentiment"]
    assert all(not r["headers"] for r in received(server))  # no x-tierguard-* header arrived
    client.tierguard_close()


def test_unsampled_calls_are_counted_with_their_tokens(simulator, redis_url, sqlite_url, monkeypatch):
    from tierguard.app import publisher as publisher_module

    monkeypatch.setattr(publisher_module, "TRAFFIC_FLUSH_SECONDS", 0.1)
    server = simulator(**SCENARIO)
    policy = {**LISTED, "defaults": {"sample_rate": 0.0}}
    client = wrapped(server, redis_url, sqlite_url, policy=policy)
    answers = [client.messages.create(category="sentiment", **ASK) for _ in range(5)]
    assert client.tierguard_flush()
    client.tierguard_close()  # flushes the traffic counters
    fields: dict[str, int] = {}
    for key in redis.Redis.from_url(redis_url).keys("tierguard:traffic:*"):
        for field, value in redis.Redis.from_url(redis_url).hgetall(key).items():
            fields[field.decode()] = fields.get(field.decode(), 0) + int(value)
    assert fields[f"sentiment|{HAIKU}|calls"] == 5
    assert fields[f"sentiment|{HAIKU}|input_tokens"] == sum(a.usage.input_tokens for a in answers)
    assert fields[f"sentiment|{HAIKU}|output_tokens"] == sum(a.usage.output_tokens for a in answers)
    assert not queued_jobs(redis_url)


def test_answers_wait_for_the_publishers_thread_only_while_few_wait(redis_url, sqlite_url):
    publisher = Publisher(get_settings(redis_url=redis_url, database_url=sqlite_url))
    body = json.dumps({"content": [], "usage": {"input_tokens": 7, "output_tokens": 2}}).encode()
    publisher.add_call("c", "m", body)
    publisher.add_answer("c", "m", b"not json")  # no usage: not counted, never raised
    publisher.add_call("c", "m", b" " * 20_000 + body)  # large: read at once
    assert len(publisher._seen) == 4
    for _ in range(HELD_WHILE):
        publisher.count("c", "m")
    publisher.add_call("c", "m", body)  # many waiting: read at once
    assert isinstance(publisher._seen[-1][2], dict)
    counts = publisher._drain()
    assert counts[("c", "m", "calls")] == 3 + HELD_WHILE
    assert counts[("c", "m", "input_tokens")] == 21 and counts[("c", "m", "output_tokens")] == 6


def test_the_one_pass_fit_agrees_with_the_guard():
    rng = random.Random(30)
    for _ in range(3000):
        context, output = rng.choice([(200, 64), (1000, 128), (200_000, 64_000)])
        text = "y" * rng.randrange(0, 3000)
        content = rng.choice([text, [{"type": "text", "text": text}],
                              [{"type": "image", "source": {"type": "url", "url": "u"}}]])
        request = {"max_tokens": rng.choice([1, 50, 100, 70_000, None, "9"]),
                   "system": "s" * rng.randrange(40), "messages": [{"role": "user", "content": content}]}
        if fits((context, output), request):
            assert too_big((context, output), request) is None
        elif not isinstance(content, list) or content[0]["type"] == "text":
            assert too_big((context, output), request) is not None  # text alone: the same verdict


def test_the_sdk_client_wrapped_again_keeps_one_mark_per_core(simulator, redis_url, sqlite_url):
    """A wrapper wrapping a wrapper: each call routed and counted once, by the outer wrapper's core."""
    server = simulator(**SCENARIO)
    inner = wrapped(server, redis_url, sqlite_url)
    outer = tierguard.ShadowedAnthropic(inner, settings=get_settings(redis_url=redis_url,
                                        database_url=sqlite_url), policy=parse_policy(LISTED))
    assert outer.messages.create(category="sentiment", model=OPUS, **ASK).model == HAIKU
    assert outer.tierguard_flush() and inner.tierguard_flush()
    assert len(queued_jobs(redis_url)) == 1
    outer.tierguard_close()
    inner.tierguard_close()


def test_a_held_call_is_settled_on_the_publishers_thread_with_its_own_latency(simulator, redis_url,
                                                                               sqlite_url):
    """An unchecked call's answer is only appended by the caller's thread; the publisher's thread
    settles it (draws, counts, shadows, releases it), and a sampled one keeps the latency it had
    however long it waited there."""
    client = wrapped(simulator(latency_ms=60, **SCENARIO), redis_url, sqlite_url)
    publisher, settled_by = client.tierguard_core.publisher, []
    tap = client._client.tap
    settle = tap.settle
    tap.settle = lambda *call: settled_by.append(threading.current_thread().name) or settle(*call)
    client.messages.create(category="sentiment", **ASK)  # the first call starts the threads
    assert client.tierguard_flush()
    settled_by.clear()
    with publisher._flush_lock:  # the publisher's thread cannot drain while the test holds this
        answer = client.messages.create(category="sentiment", **ASK)
        held = [entry for entry in publisher._seen if type(entry[0]) is not str]
        assert len(held) == 1 and held[0][3].json()["id"] == answer.id and not settled_by
        released = weakref.ref(held[0][3])
        del held
        time.sleep(0.5)
    deadline = time.monotonic() + 5
    while (publisher._seen or released() is not None) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert settled_by == ["tierguard-publisher"] and released() is None
    assert client.tierguard_flush()
    first, job = queued_jobs(redis_url)
    assert 60 <= job["primary_latency_ms"] < 400  # the answer's 60 ms, not the half second it waited
    client.tierguard_close()


def test_calls_are_settled_by_the_caller_when_many_wait_or_the_publisher_stopped(simulator, redis_url,
                                                                                 sqlite_url, monkeypatch):
    from tierguard.app import tap

    client = wrapped(simulator(**SCENARIO), redis_url, sqlite_url, policy={**LISTED, "defaults": {
        "sample_rate": 0.0}})
    publisher = client.tierguard_core.publisher
    client.messages.create(category="sentiment", **ASK)  # the first call starts the threads
    assert client.tierguard_flush() and not publisher._seen
    with publisher._flush_lock:
        monkeypatch.setattr(tap, "HELD_WHILE", 0)  # as if 2,000 entries waited
        client.messages.create(category="sentiment", **ASK)
        monkeypatch.undo()
        assert [type(entry[0]) for entry in publisher._seen] == [str]  # counted with its answer now
        publisher._stop.set()
    publisher._thread.join()
    assert publisher.held is None
    client.messages.create(category="sentiment", **ASK)
    assert [type(entry[0]) for entry in publisher._seen] == [str, str]
    assert publisher._drain()[("sentiment", HAIKU, "calls")] == 2  # (the first call's were drained)
    client.tierguard_close()


def test_only_small_200_answers_wait_for_the_publishers_thread(simulator, redis_url, sqlite_url):
    """A 429 pauses the shadows at once (before any job sent later), and a call whose request and
    answer pass 16 KiB is settled by the caller: neither is held."""
    server = simulator(**SCENARIO)
    sdk = anthropic.Anthropic(base_url=server.base_url, api_key="sk-test", max_retries=0)
    client = wrapped(server, redis_url, sqlite_url, client=sdk)
    publisher = client.tierguard_core.publisher
    client.messages.create(category="sentiment", **ASK)  # the first call starts the threads
    assert client.tierguard_flush()
    with publisher._flush_lock:  # the publisher's thread cannot drain while the test holds this
        client.messages.create(category="sentiment", max_tokens=8, system="x" * 17_000,
                               messages=ASK["messages"])
        assert [type(entry[0]) for entry in publisher._seen] == [str, str]  # its count and usage
        httpx2.post(server.base_url + "/_sim/fail", json={"status": 429, "retry_after": 7})
        with pytest.raises(anthropic.RateLimitError):
            client.messages.create(category="sentiment", **ASK)
        assert list(publisher._pauses) == [(HAIKU, 7.0)] and len(publisher._seen) == 2
    assert client.tierguard_flush() and len(queued_jobs(redis_url)) == 2
    client.tierguard_close()


def test_a_request_body_never_read_is_settled_on_the_callers_thread_without_raising(redis_url, sqlite_url):
    """Holding reads the request's size; a body sent from an iterator has none to read: the call is
    settled at once, and what fails there is counted, never raised into the caller."""
    from tierguard.app.tap import Tap

    core = Core(get_settings(redis_url=redis_url, database_url=sqlite_url), parse_policy(LISTED),
                start_routes=False)
    core.check_fork()  # the publisher's thread running: calls may be held
    core.route("sentiment", {"max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]})
    mark = core.plan("sentiment").mark
    request = httpx2.Request("POST", "http://api.local/v1/messages", content=iter([b"{}"]))
    body = json.dumps({"content": [], "usage": {"input_tokens": 1, "output_tokens": 1}}).encode()
    response = httpx2.Response(200, content=body, request=request)
    assert Tap(core).answered_whole(mark, request, response, time.perf_counter()) is None
    assert not [entry for entry in core.publisher._seen if type(entry[0]) is not str]
    assert core.stats()["internal_errors"] == 1  # sampled (rate 1): its body could not be read
    core.close()
