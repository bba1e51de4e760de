"""The simulated models speak the Messages API to the real SDK over HTTP."""

import anthropic
import httpx2
import pytest

from tests.helpers import API_KEY

SCENARIO = {"seed": 3, "categories": {
    "sentiment": {"kind": "label", "labels": ["POSITIVE", "NEGATIVE", "NEUTRAL"], "agreement": 0.9,
                  "drift": {"after": 200, "agreement": 0.3}},
    "invoice": {"kind": "json", "agreement": 1.0}}}


def sdk(server, **kw):
    return anthropic.Anthropic(base_url=server.base_url, api_key=API_KEY, **kw)


def ask(client, model, text, system="sentiment: classify"):
    return client.messages.create(model=model, max_tokens=16, system=system,
                                  messages=[{"role": "user", "content": text}])


def test_answers_are_sdk_messages_with_usage(simulator):
    client = sdk(simulator(**SCENARIO))
    msg = ask(client, "claude-opus-4-7", "great product")
    assert isinstance(msg, anthropic.types.Message)
    assert msg.content[0].text in {"POSITIVE", "NEGATIVE", "NEUTRAL"}
    assert msg.usage.input_tokens > 0 and msg.usage.output_tokens > 0
    assert ask(client, "claude-opus-4-7", "great product").content[0].text == msg.content[0].text


def test_streaming_matches_non_streaming(simulator):
    client = sdk(simulator(**SCENARIO))
    plain = ask(client, "claude-opus-4-7", "fine", system="invoice: extract")
    with client.messages.stream(model="claude-opus-4-7", max_tokens=64, system="invoice: extract",
                                messages=[{"role": "user", "content": "fine"}]) as stream:
        final = stream.get_final_message()
    assert final.content[0].text == plain.content[0].text


def test_candidate_agreement_follows_the_script_and_drifts(simulator):
    client = sdk(simulator(**SCENARIO))
    before, after = [], []
    for i in range(400):
        ref = ask(client, "claude-opus-4-7", f"review {i}").content[0].text
        cand = ask(client, "claude-haiku-4-5", f"review {i}").content[0].text
        (before if i < 200 else after).append(ref == cand)
    assert 0.83 < sum(before) / 200 < 0.96
    assert 0.2 < sum(after) / 200 < 0.42


def test_injected_errors_reach_the_sdk_as_its_own_exceptions(simulator):
    server = simulator(**SCENARIO)
    client = sdk(server, max_retries=0)
    for status, exc in [(429, anthropic.RateLimitError), (529, anthropic.OverloadedError),
                        (500, anthropic.InternalServerError)]:
        httpx2.post(server.base_url + "/_sim/fail", json={"status": status, "retry_after": 2})
        with pytest.raises(exc) as err:
            ask(client, "claude-opus-4-7", "x")
        assert err.value.response.headers["retry-after"] == "2"
    assert ask(client, "claude-opus-4-7", "x").content


def test_sdk_retries_through_a_short_storm(simulator):
    server = simulator(**SCENARIO)
    httpx2.post(server.base_url + "/_sim/fail", json={"status": 529, "count": 2, "retry_after": 0})
    assert ask(sdk(server, max_retries=2), "claude-opus-4-7", "x").content


def test_raw_and_typed_calls_read_the_same_answer(simulator):
    import asyncio

    from tierguard.pipeline.calls import call_model, call_model_async

    server = simulator(**SCENARIO)
    request = {"max_tokens": 64, "system": "invoice: extract",
               "messages": [{"role": "user", "content": "x"}]}
    typed = call_model(sdk(server), "claude-opus-4-7", request)
    raw = asyncio.run(call_model_async(
        anthropic.AsyncAnthropic(base_url=server.base_url, api_key=API_KEY), "claude-opus-4-7",
        request))
    assert (raw.text, raw.input_tokens, raw.output_tokens) == (
        typed.text, typed.input_tokens, typed.output_tokens)
