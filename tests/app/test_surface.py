"""The whole SDK surface through the wrapper (issue 26): every way of making a message takes
``category=``, is routed, counted and sampled like ``create``; the wrapper is the SDK's own class."""

import asyncio

import anthropic
import httpx2

import tierguard
from tests.app.test_client import SCENARIO, queued_jobs
from tests.app.test_fidelity import LISTED, wrapped
from tests.helpers import API_KEY
from tierguard.config import get_settings
from tierguard.policy import parse_policy

HAIKU, OPUS = "claude-haiku-4-5", "claude-opus-4-7"
ASK = {"max_tokens": 8, "system": "sentiment: classify", "messages": [{"role": "user", "content": "hi"}]}


def received(server) -> list[dict]:
    return httpx2.get(server.base_url + "/_sim/requests").json()["requests"]


def test_the_wrapper_is_the_sdks_client_and_a_context_manager(simulator, redis_url, sqlite_url):
    server = simulator(**SCENARIO)
    settings = get_settings(redis_url=redis_url, database_url=sqlite_url)
    with tierguard.ShadowedAnthropic(anthropic.Anthropic(base_url=server.base_url, api_key=API_KEY),
                                     settings=settings, policy=parse_policy(LISTED)) as client:
        assert isinstance(client, anthropic.Anthropic)
        assert isinstance(client, tierguard.ShadowedAnthropic)
        assert client.messages.create(category="sentiment", **ASK).model == HAIKU
        assert client.tierguard_flush()
    assert client.is_closed()
    # Built directly from the SDK's own arguments, as ``anthropic.Anthropic(...)`` is.
    direct = tierguard.ShadowedAnthropic(base_url=server.base_url, api_key=API_KEY, settings=settings,
                                         policy=parse_policy(LISTED))
    assert direct.messages.create(category="sentiment", **ASK).model == HAIKU
    direct.close()


def test_with_options_and_copy_keep_the_wrapper_and_its_state(simulator, redis_url, sqlite_url):
    client = wrapped(simulator(**SCENARIO), redis_url, sqlite_url)
    for other in (client.with_options(timeout=30, max_retries=0), client.copy(default_headers={"x-a": "b"})):
        assert isinstance(other, tierguard.ShadowedAnthropic)
        assert other.tierguard_core is client.tierguard_core
        assert other.messages.create(category="sentiment", **ASK).model == HAIKU
    assert client.tierguard_flush()
    assert client.tierguard_stats()["published"] == 2
    client.with_options(timeout=5).close()  # a copy closes the shared connections, not tierguard's state
    assert client.tierguard_stats()["published"] == 2
    client.tierguard_close()


def test_raw_and_streaming_responses_are_the_sdks_own_and_shadowed(simulator, redis_url, sqlite_url):
    server = simulator(**SCENARIO)
    client = wrapped(server, redis_url, sqlite_url)
    raw = client.messages.with_raw_response.create(category="sentiment", **ASK)
    assert raw.headers.get("content-type", "").startswith("application/json")
    assert raw.parse().model == HAIKU
    with client.messages.with_streaming_response.create(category="sentiment", **ASK) as response:
        assert response.parse().model == HAIKU
    with client.messages.with_streaming_response.create(category="sentiment", stream=True, **ASK) as sse:
        lines = [line for line in sse.iter_lines() if line]
    assert any("message_stop" in line for line in lines)
    assert client.tierguard_flush()
    jobs = queued_jobs(redis_url)
    assert len(jobs) == 3 and {j["served_model"] for j in jobs} == {HAIKU}
    assert all(j["request"]["system"] == "sentiment: classify" for j in jobs)
    client.tierguard_close()


def test_beta_messages_and_count_tokens_are_routed(simulator, redis_url, sqlite_url):
    server = simulator(**SCENARIO)
    client = wrapped(server, redis_url, sqlite_url)
    beta = client.beta.messages.create(category="sentiment", betas=["context-management-2025-06-27"], **ASK)
    assert beta.model == HAIKU
    with client.beta.messages.stream(category="sentiment", **ASK) as stream:
        assert stream.get_final_message().model == HAIKU
    counted = client.messages.count_tokens(category="sentiment", messages=ASK["messages"],
                                           model="claude-sonnet-4-5")
    assert counted.input_tokens > 0
    assert client.tierguard_flush()
    jobs = queued_jobs(redis_url)
    assert len(jobs) == 2  # the count of tokens is routed, not a production answer
    assert jobs[0]["headers"] == {"anthropic-beta": "context-management-2025-06-27"}
    sent = received(server)
    assert all("x-tierguard-category" not in r["headers"] for r in sent)  # never goes upstream
    client.tierguard_close()


def test_a_category_named_by_header_or_user_id_is_routed(simulator, redis_url, sqlite_url):
    server = simulator(**SCENARIO)
    client = wrapped(server, redis_url, sqlite_url)
    by_header = client.with_options(default_headers={"x-tierguard-category": "sentiment"})
    assert by_header.messages.create(model=OPUS, **ASK).model == HAIKU  # routed in the request's bytes
    by_user = client.messages.create(model=OPUS, metadata={"user_id": "tg:sentiment:u-42"}, **ASK)
    assert by_user.model == HAIKU
    both = client.messages.create(category="sentiment", metadata={"user_id": "tg:other:"}, **ASK)
    assert both.model == HAIKU  # category= wins; the prefix is stripped all the same
    assert client.tierguard_flush()
    assert len(queued_jobs(redis_url)) == 3
    bodies = [r["body"] for r in received(server)]
    assert '"user_id": "u-42"' in bodies[-2].replace('":"', '": "') and "tg:" not in "".join(bodies)
    client.tierguard_close()


def test_the_async_surface(simulator, redis_url, sqlite_url):
    server = simulator(**SCENARIO)
    client = tierguard.AsyncShadowedAnthropic(
        anthropic.AsyncAnthropic(base_url=server.base_url, api_key=API_KEY),
        settings=get_settings(redis_url=redis_url, database_url=sqlite_url), policy=parse_policy(LISTED))

    async def main():
        assert isinstance(client, anthropic.AsyncAnthropic)
        raw = await client.messages.with_raw_response.create(category="sentiment", **ASK)
        assert (await raw.parse()).model == HAIKU
        other = client.with_options(timeout=20)
        assert (await other.beta.messages.create(category="sentiment", **ASK)).model == HAIKU
        async with other.messages.stream(category="sentiment", **ASK) as stream:
            assert (await stream.get_final_message()).model == HAIKU
        counted = await client.messages.count_tokens(category="sentiment", messages=ASK["messages"],
                                                     model=OPUS)
        assert counted.input_tokens > 0
        async with client:
            pass

    asyncio.run(main())
    assert client.tierguard_stats()["published"] + client.tierguard_stats().get("submitted", 0) >= 3
    assert len(queued_jobs(redis_url)) == 3


def test_odd_but_valid_calls_go_as_the_sdk_sends_them(simulator, redis_url, sqlite_url):
    server = simulator(**SCENARIO)
    client = wrapped(server, redis_url, sqlite_url)
    turns = ({"role": "user", "content": text} for text in ["hi"])  # a generator: read once, by both
    assert client.messages.create(category="sentiment", max_tokens=8, messages=turns).model == HAIKU
    assert received(server)[-1]["body"].count('"hi"') == 1
    both = client.messages.create(category="sentiment", extra_headers={"X-Tierguard-Category": "other"},
                                  **ASK)
    assert both.model == HAIKU  # category= wins over a header given as well, whatever its case
    again = tierguard.ShadowedAnthropic(client, settings=client.tierguard_core.settings,
                                        policy=parse_policy(LISTED))  # a wrapper wrapped again
    assert again.tierguard_core is not client.tierguard_core
    assert again.messages.create(category="sentiment", **ASK).model == HAIKU
    assert again.tierguard_flush() and client.tierguard_flush()
    assert again.tierguard_stats()["published"] == 1 and client.tierguard_stats()["published"] == 2
    assert len(queued_jobs(redis_url)) == 3
    again.tierguard_close()
    client.tierguard_close()


def test_an_async_stream_left_early_closes_cleanly_and_is_not_shadowed(simulator, redis_url, sqlite_url):
    server = simulator(**SCENARIO)
    client = tierguard.AsyncShadowedAnthropic(
        anthropic.AsyncAnthropic(base_url=server.base_url, api_key=API_KEY),
        settings=get_settings(redis_url=redis_url, database_url=sqlite_url), policy=parse_policy(LISTED))

    async def main():
        stream = await client.messages.create(category="sentiment", stream=True, **ASK)
        async for _event in stream:
            break
        await stream.close()
        full = await client.messages.create(category="sentiment", stream=True, **ASK)
        return [event.type async for event in full]

    events = asyncio.run(main())
    assert events[-1] == "message_stop"
    assert client.tierguard_flush()
    assert len(queued_jobs(redis_url)) == 1  # only the stream read to its end
    assert client.tierguard_stats().get("internal_errors", 0) == 0
    client.tierguard_close()
