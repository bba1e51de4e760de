"""The simulated models speak the Messages API to the real SDK over HTTP."""

import hashlib

import anthropic
import httpx2
import pytest

from tests.helpers import API_KEY
from tierguard.sim.models import Scenario, Simulator

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
    # A string goes as the header's value (an HTTP date, or one a client cannot read).
    for value in ("Wed, 21 Oct 2026 07:28:00 GMT", "soon"):
        httpx2.post(server.base_url + "/_sim/fail", json={"status": 429, "retry_after": value})
        with pytest.raises(anthropic.RateLimitError) as err:
            ask(client, "claude-opus-4-7", "x")
        assert err.value.response.headers["retry-after"] == value
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


def test_models_lists_sonnet_too(simulator):
    ids = {m.id for m in sdk(simulator(**SCENARIO)).models.list()}
    assert {"claude-haiku-4-5", "claude-sonnet-4-6", "claude-opus-4-7"} <= ids


def answers(sim, model, n, system="tiers: classify", start=0):
    return [sim.answer({"model": model, "system": system,
                        "messages": [{"role": "user", "content": f"case {i}"}]})[1]
            for i in range(start, start + n)]


LADDER = {"seed": 5, "categories": {"tiers": {
    "kind": "label", "labels": ["A", "B", "C"], "agreement": 0.5,
    "models": {"claude-haiku-4-5": {"agreement": 0.0}, "claude-sonnet-4-6": {"agreement": 1.0}}}}}


def test_a_model_of_its_own_keeps_its_own_agreement():
    sim = Simulator(Scenario.from_dict(LADDER))
    ref = answers(sim, "claude-opus-4-7", 60)
    hits = {m: sum(a == b for a, b in zip(answers(sim, m, 60), ref, strict=True))
            for m in ("claude-haiku-4-5", "claude-sonnet-4-6", "claude-haiku-3-5")}
    assert hits["claude-haiku-4-5"] == 0 and hits["claude-sonnet-4-6"] == 60
    assert 15 < hits["claude-haiku-3-5"] < 45  # not listed: the category's 0.5


def test_a_model_of_its_own_drifts_after_its_own_calls():
    sim = Simulator(Scenario.from_dict({"categories": {"tiers": {
        "kind": "label", "labels": ["A", "B", "C"], "agreement": 1.0,
        "drift": {"after": 30, "agreement": 0.0},
        "models": {"claude-haiku-4-5": {"drift": {"after": 20, "agreement": 0.0}}}}}}))
    haiku, sonnet = [], []
    for i in range(40):  # interleaved: haiku counts its own calls, sonnet every candidate call
        ref = answers(sim, "claude-opus-4-7", 1, start=i)
        haiku.append(answers(sim, "claude-haiku-4-5", 1, start=i) == ref)
        sonnet.append(answers(sim, "claude-sonnet-4-6", 1, start=i) == ref)
    assert haiku == [True] * 20 + [False] * 20
    assert sonnet == [True] * 15 + [False] * 25  # the 30th candidate call is sonnet's 15th


def test_scenarios_without_models_answer_exactly_as_before():
    sim = Simulator(Scenario.from_dict({"seed": 3, "categories": {
        "sentiment": {"kind": "label", "labels": ["POSITIVE", "NEGATIVE", "NEUTRAL"], "agreement": 0.9,
                      "drift": {"after": 200, "agreement": 0.3}, "reference_noise": 0.05},
        "invoice": {"kind": "json", "agreement": 0.7},
        "summary": {"kind": "text", "agreement": 0.8, "paraphrase": 0.5}}}))
    out = []
    for i in range(300):
        for system in ("sentiment: classify", "invoice: extract", "summary: write"):
            for model in ("claude-opus-4-7", "claude-haiku-4-5", "claude-sonnet-4-6"):
                out.extend(answers(sim, model, 1, system=system, start=i))
    # the digest of these answers before per-model scripts existed
    assert hashlib.sha256("\n".join(out).encode()).hexdigest() == (
        "42ccae94129cbb25bf95ae9dbe6ae04aba9e7e8f19dad2afac91e141fed5fc52")


def test_a_script_mid_run_changes_snapshots_and_the_references_answers(simulator):
    server = simulator(**SCENARIO)
    client = sdk(server)
    texts = [f"case {i}" for i in range(200)]
    before = [ask(client, "claude-opus-4-7", t).content[0].text for t in texts]
    assert ask(client, "claude-opus-4-7", "x").model == "claude-opus-4-7"
    scripted = httpx2.post(f"{server.base_url}/_sim/script", json={
        "snapshots": {"claude-opus-4-7": "claude-opus-4-7-20270101"},
        "categories": {"sentiment": {"models": {"claude-opus-4-7": {"agreement": 0.8}}}}}).json()
    assert scripted["snapshots"] == {"claude-opus-4-7": "claude-opus-4-7-20270101"}
    after = [ask(client, "claude-opus-4-7", t) for t in texts]
    assert {m.model for m in after} == {"claude-opus-4-7-20270101"}
    wrong = sum(a.content[0].text != b for a, b in zip(after, before, strict=True))
    assert 20 <= wrong <= 60  # 20 % of 200, deterministic per request
    assert [ask(client, "claude-opus-4-7", t).content[0].text for t in texts[:20]] == \
        [m.content[0].text for m in after[:20]]
    bad = httpx2.post(f"{server.base_url}/_sim/script", json={"categories": {"nope": {}}})
    assert bad.status_code == 400 and "nope" in bad.text
