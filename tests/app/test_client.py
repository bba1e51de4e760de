"""The wrapper: SDK objects untouched, routes from Redis, never raising when tierguard's side fails."""

import asyncio

import anthropic
import pytest
import redis

import tierguard
from tests.helpers import API_KEY, wait_until
from tierguard.config import get_settings
from tierguard.policy import parse_policy
from tierguard.routing.routes import REDIS_KEY
from tierguard.sim.servers import free_port

SCENARIO = {"categories": {"sentiment": {"kind": "label", "labels": ["POSITIVE", "NEGATIVE"]}}}
POLICY = parse_policy({"defaults": {"sample_rate": 1.0},
                       "categories": {"sentiment": {"comparator": {"type": "label",
                                                                   "labels": ["POSITIVE", "NEGATIVE"]}}}})


def wrapper(server, **settings):
    return tierguard.ShadowedAnthropic(
        anthropic.Anthropic(base_url=server.base_url, api_key=API_KEY),
        settings=get_settings(**settings), policy=POLICY)


def call(client, text="ok", **kw):
    return client.messages.create(category="sentiment", max_tokens=8, system="sentiment: classify",
                                  messages=[{"role": "user", "content": text}], **kw)


def test_returns_the_sdk_message_and_publishes_a_job(simulator, redis_url, sqlite_url):
    server = simulator(**SCENARIO)
    sdk = anthropic.Anthropic(base_url=server.base_url, api_key=API_KEY)
    settings = get_settings(redis_url=redis_url, database_url=sqlite_url, route_ttl=0.1)
    client = tierguard.ShadowedAnthropic(sdk, settings=settings, policy=POLICY)
    msg = call(client, model="ignored-by-routing")
    assert type(msg) is anthropic.types.Message
    assert msg.model == "claude-haiku-4-5"  # the policy's initial route: the candidate
    assert client.tierguard_flush()
    assert client.tierguard_stats()["published"] == 1
    assert redis.Redis.from_url(redis_url).llen(settings.queue) == 1
    # Without a category it is the plain SDK call; other attributes pass through.
    plain = client.messages.create(model="claude-opus-4-7", max_tokens=8, system="x",
                                   messages=[{"role": "user", "content": "hi"}])
    assert plain.model == "claude-opus-4-7"
    assert client.base_url == sdk.base_url
    assert client.tierguard_stats()["submitted"] == 1
    client.tierguard_close()


def test_a_message_carries_its_jobs_once_and_no_repr_of_them(simulator, redis_url, sqlite_url):
    """Celery would put a repr of the jobs (prompts and answers) in every message's headers, at a
    cost of most of a publish's CPU: the publisher names their count instead."""
    import json

    server = simulator(**SCENARIO)
    client = wrapper(server, redis_url=redis_url, database_url=sqlite_url)
    for i in range(3):
        call(client, f"secret prompt {i}")
    assert client.tierguard_flush()
    sent = sorted(j["request"]["messages"][0]["content"] for j in queued_jobs(redis_url))
    assert sent == [f"secret prompt {i}" for i in range(3)]
    for headers, jobs in queued_messages(redis_url):
        assert headers["argsrepr"] == f"[<{len(jobs)} shadow jobs>]"
        assert "secret prompt" not in json.dumps(headers)
    client.tierguard_close()


def test_jobs_are_gathered_into_messages_of_at_most_the_set_size(simulator, redis_url, sqlite_url):
    server = simulator(**SCENARIO)
    client = wrapper(server, redis_url=redis_url, database_url=sqlite_url,
                     publish_jobs_per_message=2, publish_gather_s=3)
    for i in range(5):
        call(client, f"text {i}")
    assert client.tierguard_flush(15)
    sizes = sorted(len(jobs) for _, jobs in queued_messages(redis_url))
    assert sizes == [1, 2, 2]  # five calls in three seconds: two full messages, then the last one
    client.tierguard_close()


def test_a_process_that_exits_after_its_calls_publishes_them_first(simulator, redis_url, sqlite_url,
                                                                   tmp_path):
    """No ``tierguard_close``: the interpreter's exit waits (briefly) for the jobs still queued."""
    import subprocess
    import sys

    server = simulator(**SCENARIO)
    script = tmp_path / "app.py"
    script.write_text(
        "import anthropic, tierguard\n"
        "from tierguard.config import get_settings\n"
        "from tierguard.policy import parse_policy\n"
        f"policy = parse_policy({POLICY.model_dump(mode='json', exclude_unset=True)!r})\n"
        f"sdk = anthropic.Anthropic(base_url={server.base_url!r}, api_key={API_KEY!r})\n"
        f"settings = get_settings(redis_url={redis_url!r}, database_url={sqlite_url!r})\n"
        "client = tierguard.ShadowedAnthropic(sdk, settings=settings, policy=policy)\n"
        "for i in range(3):\n"
        "    client.messages.create(category='sentiment', max_tokens=8, system='sentiment: classify',\n"
        "                           messages=[{'role': 'user', 'content': f'text {i}'}])\n")
    subprocess.run([sys.executable, str(script)], check=True, timeout=60)
    assert len(queued_jobs(redis_url)) == 3


def test_closing_sends_at_once_what_the_publisher_is_gathering(simulator, redis_url, sqlite_url):
    import time

    server = simulator(**SCENARIO)
    client = wrapper(server, redis_url=redis_url, database_url=sqlite_url, publish_gather_s=5)
    call(client, "the last one")
    started = time.monotonic()
    client.tierguard_close()
    assert time.monotonic() - started < 1.5  # not the 5 s of gathering, nor close's 2 s
    assert redis.Redis.from_url(redis_url).llen("tierguard") == 1


def test_route_changes_in_redis_reach_the_wrapper(simulator, redis_url, sqlite_url):
    server = simulator(**SCENARIO)
    client = wrapper(server, redis_url=redis_url, database_url=sqlite_url, route_ttl=0.05)
    redis.Redis.from_url(redis_url).hset(REDIS_KEY, "sentiment", "claude-opus-4-7|2")
    wait_until(lambda: call(client).model == "claude-opus-4-7", 5, "the new route")
    client.tierguard_close()


def test_redis_down_calls_succeed_and_drops_are_counted(simulator, sqlite_url):
    server = simulator(**SCENARIO)
    dead = f"redis://127.0.0.1:{free_port()}/0"
    client = wrapper(server, redis_url=dead, database_url=sqlite_url)
    messages = [call(client, f"text {i}") for i in range(50)]
    assert all(m.content for m in messages)
    assert client.tierguard_flush()
    stats = client.tierguard_stats()
    assert stats["submitted"] == 50
    assert stats["dropped_broker_down"] == 50 and stats.get("published", 0) == 0
    assert stats["internal_errors"] == 0
    client.tierguard_close()


def test_full_buffer_drops_instead_of_blocking(simulator, sqlite_url, redis_url):
    server = simulator(**SCENARIO)
    client = wrapper(server, redis_url=redis_url, database_url=sqlite_url, publish_buffer=1)
    client.tierguard_core.check_fork()  # the threads running, as after a first call
    client.tierguard_core.publisher._stop.set()  # nobody drains the queue now
    client.tierguard_core.publisher._thread.join()
    for i in range(5):
        call(client, str(i))
    stats = client.tierguard_stats()
    assert stats["submitted"] == 1 and stats["dropped_buffer_full"] == 4


def test_async_twin(simulator, redis_url, sqlite_url):
    server = simulator(**SCENARIO)
    settings = get_settings(redis_url=redis_url, database_url=sqlite_url)
    client = tierguard.AsyncShadowedAnthropic(
        anthropic.AsyncAnthropic(base_url=server.base_url, api_key=API_KEY), settings=settings,
        policy=POLICY)

    async def main():
        return await asyncio.gather(*(call(client, f"t{i}") for i in range(5)))

    messages = asyncio.run(main())
    assert all(type(m) is anthropic.types.Message for m in messages)
    assert client.tierguard_flush()
    assert client.tierguard_stats()["published"] == 5
    client.tierguard_close()


def queued_messages(redis_url, queue="tierguard"):
    """(headers, shadow jobs) of every message waiting in the broker queue, oldest first."""
    import base64
    import json

    messages = [json.loads(raw) for raw in reversed(redis.Redis.from_url(redis_url).lrange(queue, 0, -1))]
    return [(m["headers"], json.loads(base64.b64decode(m["body"]))[0][0]) for m in messages]


def queued_jobs(redis_url, queue="tierguard"):
    """Every shadow job waiting in the broker queue, oldest first."""
    return [job for _, jobs in queued_messages(redis_url, queue) for job in jobs]


def test_streams_are_the_sdks_own_and_shadowed_once_complete(simulator, redis_url, sqlite_url):
    server = simulator(**SCENARIO)
    client = wrapper(server, redis_url=redis_url, database_url=sqlite_url)
    stream = call(client, "first", stream=True)
    assert type(stream) is anthropic.Stream
    events = list(stream)
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta")
    with client.messages.stream(category="sentiment", max_tokens=8, system="sentiment: classify",
                                messages=[{"role": "user", "content": "second"}]) as managed:
        assert type(managed).__name__ == "MessageStream"
        final = managed.get_final_message()
    # Abandoned after the first event: not shadowed.
    abandoned = call(client, "third", stream=True)
    next(iter(abandoned))
    abandoned.close()
    assert client.tierguard_flush()
    jobs = queued_jobs(redis_url)
    assert [j["request"]["messages"][0]["content"] for j in jobs] == ["first", "second"]
    assert jobs[0]["primary_text"] == text and jobs[1]["primary_text"] == final.content[0].text
    assert jobs[1]["primary_output_tokens"] == final.usage.output_tokens
    assert jobs[1]["primary_input_tokens"] == final.usage.input_tokens
    assert all(j["served_model"] == "claude-haiku-4-5" and "stream" not in j["request"] for j in jobs)
    stats = client.tierguard_stats()
    assert stats["submitted"] == 2 and stats["internal_errors"] == 0
    client.tierguard_close()


def test_async_streams(simulator, redis_url, sqlite_url):
    server = simulator(**SCENARIO)
    client = tierguard.AsyncShadowedAnthropic(
        anthropic.AsyncAnthropic(base_url=server.base_url, api_key=API_KEY),
        settings=get_settings(redis_url=redis_url, database_url=sqlite_url), policy=POLICY)

    async def run():
        stream = await client.messages.create(category="sentiment", max_tokens=8, system="sentiment: x",
                                              stream=True, messages=[{"role": "user", "content": "a"}])
        assert type(stream) is anthropic.AsyncStream
        async for _ in stream:
            pass
        async with client.messages.stream(category="sentiment", max_tokens=8, system="sentiment: x",
                                          messages=[{"role": "user", "content": "b"}]) as managed:
            return await managed.get_final_message()

    final = asyncio.run(run())
    assert client.tierguard_flush()
    jobs = queued_jobs(redis_url)
    assert [j["request"]["messages"][0]["content"] for j in jobs] == ["a", "b"]
    assert jobs[1]["primary_text"] == final.content[0].text
    client.tierguard_close()


def test_unbounded_category_names_stop_at_the_cap_and_never_reach_the_caller(simulator, redis_url,
                                                                             sqlite_url):
    import random
    import string

    # A database of its own: a process an earlier test left behind may still copy its categories'
    # routes into database 0, and every known category counts towards the cap.
    redis_url = redis_url.rsplit("/", 1)[0] + "/14"
    redis.Redis.from_url(redis_url).flushdb()
    server = simulator(**SCENARIO)
    policy = parse_policy({"defaults": {"sample_rate": 1.0}, "max_categories": 50,
                           "categories": {"sentiment": {}}})
    client = tierguard.ShadowedAnthropic(anthropic.Anthropic(base_url=server.base_url, api_key=API_KEY),
                                         settings=get_settings(redis_url=redis_url,
                                                               database_url=sqlite_url),
                                         policy=policy)
    core = client.tierguard_core
    rng = random.Random(1)
    names = ["".join(rng.choices(string.ascii_lowercase, k=12)) for _ in range(10_000)]
    answer = {"content": [{"type": "text", "text": "POSITIVE"}], "usage": {"input_tokens": 3,
                                                                            "output_tokens": 1}}
    for name in names:  # what the wrapper does for each call, without the HTTP
        cat, request = core.route(name, {"max_tokens": 8, "messages": []})
        if core.sampled(cat, request):
            core.submit(cat, request, answer, 0.0)
    assert len(core.categories) == 50  # unlisted ones: "sentiment", the policy's own, never counts
    stats = client.tierguard_stats()
    assert stats["uncategorized_over_max_categories"] == 10_000 - 50 and stats["internal_errors"] == 0
    assert core.route("sentiment", {"max_tokens": 8, "messages": []})[0] is not None  # listed: always
    # Real calls past the cap and with invalid names are served, unrouted, never raising.
    for bad in ("another-new-one", "", " spaces ", "x" * 65, "ünïcode", "a/b"):
        msg = client.messages.create(category=bad, max_tokens=8, system="sentiment: classify",
                                     messages=[{"role": "user", "content": "hi"}])
        assert msg.model == "claude-opus-4-7"  # no route: the caller's model, else the reference
    assert client.tierguard_stats()["uncategorized_invalid_name"] == 5
    client.tierguard_flush()
    client.tierguard_close()
    fields = {f for k in redis.Redis.from_url(redis_url).keys("tierguard:traffic:*")
              for f in redis.Redis.from_url(redis_url).hkeys(k)}
    assert len({f.split(b"|")[0] for f in fields}) <= 50
    assert len(queued_jobs(redis_url)) == 50  # one shadow per tracked category, none for the rest
    with pytest.raises(Exception, match="categories: 'a b'"):
        parse_policy({"categories": {"a b": {}}})
