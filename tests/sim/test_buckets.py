"""Rate-limit token buckets of the simulated API, per (API key, model), seen through the real SDK."""

import datetime as dt
import hashlib
import time

import anthropic
import httpx2
import pytest

from tests.helpers import API_KEY

MODEL = "claude-haiku-4-5"
OTHER_KEY = "sk-ant-other-" + "y" * 24
FAMILIES = ("requests", "input-tokens", "output-tokens", "tokens")
SCENARIO = {"seed": 1, "categories": {"invoice": {"kind": "json", "agreement": 1.0}}}


def sdk(server, key=API_KEY, **kw):
    return anthropic.Anthropic(base_url=server.base_url, api_key=key, **{"max_retries": 0, **kw})


def call(client, text="hello", model=MODEL):
    """(headers, message) of one call."""
    raw = client.messages.with_raw_response.create(
        model=model, max_tokens=64, system="invoice: extract", messages=[{"role": "user", "content": text}])
    return raw.headers, raw.parse()


def buckets(server, **body):
    reply = httpx2.post(server.base_url + "/_sim/buckets", json={"model": MODEL, **body})
    assert reply.status_code == 200, reply.text
    return reply.json()


def stats(server):
    return httpx2.get(server.base_url + "/_sim/stats").json()


def n(headers, family, name="remaining"):
    return int(headers[f"anthropic-ratelimit-{family}-{name}"])


def fp(key):
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def test_every_answer_carries_the_bucket_headers_and_they_go_down(simulator):
    limits = {"requests_per_minute": 100, "input_tokens_per_minute": 100_000,
              "output_tokens_per_minute": 10_000}
    server = simulator(**SCENARIO, rate_limits={MODEL: limits}, time_scale=0.001)  # next to no refill
    client = sdk(server)
    first, msg = call(client)
    second, _ = call(client, "again")
    for family in FAMILIES:
        for name in ("limit", "remaining", "reset"):
            assert f"anthropic-ratelimit-{family}-{name}" in first
    assert (n(first, "requests", "limit"), n(first, "tokens", "limit")) == (100, 110_000)
    assert (n(first, "requests"), n(second, "requests")) == (99, 98)
    assert 0 <= n(first, "input-tokens") - (100_000 - msg.usage.input_tokens) <= 2
    assert 0 <= n(first, "output-tokens") - (10_000 - msg.usage.output_tokens) <= 2  # deducted at once
    assert n(second, "input-tokens") < n(first, "input-tokens")
    assert n(second, "output-tokens") < n(first, "output-tokens")
    assert n(second, "tokens") < n(first, "tokens") <= 110_000
    reset = dt.datetime.fromisoformat(first["anthropic-ratelimit-requests-reset"])
    now = dt.datetime.now(dt.UTC)
    assert now < reset <= now + dt.timedelta(seconds=2 * 0.6 / 0.001 + 1)  # 2 requests, 0.6 ks each
    assert stats(server)["served"] == {MODEL: 2}


def test_an_empty_bucket_answers_429_with_retry_after_and_refills(simulator):
    server = simulator(**SCENARIO)
    buckets(server, requests_per_minute=2, time_scale=60)  # a "minute" lasts one real second
    client = sdk(server)
    call(client), call(client)
    with pytest.raises(anthropic.RateLimitError, match="2 requests per minute") as err:
        call(client)
    headers = err.value.response.headers
    assert err.value.body["error"]["type"] == "rate_limit_error"
    assert headers["retry-after"] == "1" and 0 < int(headers["retry-after-ms"]) <= 500
    assert n(headers, "requests") == 0 and n(headers, "requests", "limit") == 2
    assert "anthropic-ratelimit-input-tokens-limit" not in headers  # only the scripted family
    time.sleep(int(headers["retry-after-ms"]) / 1000 + 0.05)
    assert n(call(client)[0], "requests") == 0
    emptied, patient = time.monotonic(), sdk(server, max_retries=3)
    sent = time.monotonic()
    call(patient)  # the SDK waits retry-after-ms and gets through
    got = stats(server)
    # The fifth call meets an empty bucket unless a busy host let its token refill first (0.5 s).
    assert got["rate_limited"][MODEL] >= (2 if sent - emptied < 0.3 else 1)
    assert got["served"][MODEL] == 4
    assert got["by_key"][fp(API_KEY)][MODEL] == {"served": 4, "rate_limited": got["rate_limited"][MODEL]}


def test_output_tokens_are_deducted_after_the_answer_and_hold_the_next_request(simulator):
    server = simulator(**SCENARIO)
    buckets(server, output_tokens_per_minute=10, requests_per_minute=1000)
    client = sdk(server)
    headers, msg = call(client)
    assert msg.usage.output_tokens > 10  # a JSON invoice: more than the whole bucket
    assert n(headers, "output-tokens") == 0 and n(headers, "tokens", "limit") == 10
    with pytest.raises(anthropic.RateLimitError, match="output tokens") as err:
        call(client)
    wait_s = int(err.value.response.headers["retry-after-ms"]) / 1000
    assert wait_s > 6 * (msg.usage.output_tokens - 10) * 0.99  # 10 a minute: 6 s a token, below zero


def test_input_tokens_bucket(simulator):
    server = simulator(**SCENARIO)
    buckets(server, input_tokens_per_minute=45)
    client = sdk(server)
    call(client, "x" * 60)  # ~25 tokens
    with pytest.raises(anthropic.RateLimitError, match="input tokens"):
        call(client, "x" * 60)
    assert n(call(client, "x")[0], "input-tokens") >= 0  # a small one still fits


def test_each_api_key_has_its_own_buckets_and_overrides(simulator):
    server = simulator(**SCENARIO, rate_limits={MODEL: {"requests_per_minute": 1,
                                                        "keys": {OTHER_KEY: {"requests_per_minute": 3}}}})
    mine, other = sdk(server), sdk(server, OTHER_KEY)
    call(mine)
    with pytest.raises(anthropic.RateLimitError):
        call(mine)
    assert [n(call(other)[0], "requests") for _ in range(3)] == [2, 1, 0]
    with pytest.raises(anthropic.RateLimitError):
        call(other)
    # the key as X-Api-Key is the same caller as the SDK's Authorization: Bearer
    reply = httpx2.post(server.base_url + "/v1/messages", headers={"x-api-key": API_KEY}, json={
        "model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]})
    assert reply.status_code == 429 and reply.headers["anthropic-ratelimit-requests-remaining"] == "0"
    buckets(server, key=API_KEY, requests_per_minute=5)  # an override at run time, full again
    assert n(call(mine)[0], "requests") == 4
    by_key = stats(server)["by_key"]
    assert by_key[fp(API_KEY)][MODEL] == {"served": 2, "rate_limited": 2}
    assert by_key[fp(OTHER_KEY)][MODEL] == {"served": 3, "rate_limited": 1}
    assert set(by_key) == {fp(API_KEY), fp(OTHER_KEY)}


def test_streams_share_the_buckets_and_batches_do_not_take_from_them(simulator):
    server = simulator(**SCENARIO, rate_limits={MODEL: {"requests_per_minute": 10}})
    client = sdk(server)
    with client.messages.stream(model=MODEL, max_tokens=64, system="invoice: extract",
                                messages=[{"role": "user", "content": "x"}]) as stream:
        stream.get_final_message()
        assert n(stream.response.headers, "requests") == 9
    client.messages.batches.create(requests=[{"custom_id": "a", "params": {
        "model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]}}])
    assert n(call(client)[0], "requests") == 8


def test_models_without_buckets_keep_the_scripted_headers_and_buckets_win(simulator):
    server = simulator(**SCENARIO)
    client = sdk(server)
    plain, _ = call(client, model="claude-opus-4-7")
    assert not any(h.startswith("anthropic-ratelimit") for h in plain)
    httpx2.post(server.base_url + "/_sim/ratelimit", json={"model": "claude-opus-4-7", "limit": 50,
                                                             "remaining": 7, "reset_in": 30})
    httpx2.post(server.base_url + "/_sim/ratelimit", json={"model": MODEL, "limit": 50, "remaining": 7})
    assert n(call(client, model="claude-opus-4-7")[0], "requests") == 7
    buckets(server, requests_per_minute=20)
    assert n(call(client)[0], "requests") == 19  # the bucket, not the script
    buckets(server, clear=True)
    assert n(call(client)[0], "requests") == 7  # the script again


def test_bad_bucket_bodies_are_refused(simulator):
    server = simulator(**SCENARIO)
    for body in ({"requests_per_minute": 5}, {"model": MODEL, "requests_per_minute": -1},
                 {"model": MODEL, "requests_per_minute": 5, "time_scale": 0}):
        assert httpx2.post(server.base_url + "/_sim/buckets", json=body).status_code == 400
