"""Broken answers on purpose, through the real SDK: each kind, streamed and not, from the scenario
and from POST /_sim/script; the reference only when listed; the answer checks see each kind."""

import anthropic
import httpx2
import pytest

from tests.helpers import API_KEY
from tierguard.compare import REASONS, Checks, pattern_of, resolve
from tierguard.sim.broken import Broken
from tierguard.sim.models import Scenario

HAIKU, SONNET, OPUS = "claude-haiku-4-5", "claude-sonnet-4-6", "claude-opus-4-7"
LABELS = ["POSITIVE", "NEGATIVE"]
COMPARATORS = {"sentiment": {"type": "label", "labels": LABELS},
               "invoice": {"type": "json", "schema": {"type": "object", "required": ["vendor", "total"]}},
               "summary": {"type": "exact", "pattern": r"\A[A-Z].*\.\Z"}}
KIND = {"sentiment": "label", "invoice": "json", "summary": "text"}


def scenario(kinds=None, rate=1.0, **extra):
    broken = {"rate": rate, **({"kinds": kinds} if kinds else {})}
    return {"seed": 5, "categories": {
        name: {"kind": KIND[name], "labels": LABELS, "agreement": 1.0, "broken": broken, **extra}
        for name in KIND}}


def sdk(server):
    return anthropic.Anthropic(base_url=server.base_url, api_key=API_KEY, max_retries=0)


def ask(client, model, category, text="case 1", stream=False):
    kw = {"model": model, "max_tokens": 64, "system": f"{category}: answer",
          "messages": [{"role": "user", "content": text}]}
    if not stream:
        return client.messages.create(**kw)
    with client.messages.stream(**kw) as events:
        return events.get_final_message()


def text_of(message):
    return "".join(b.text for b in message.content if b.type == "text")


def blocks(message):
    return [(b.type, getattr(b, "text", None)) for b in message.content]


def checked(category, message):
    spec = COMPARATORS[category]
    return Checks(REASONS, resolve(spec), pattern_of(spec)).check(message)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("category", list(KIND))
def test_each_kind_reaches_the_sdk_and_fails_its_check(simulator, category, stream):
    right = ask(sdk(simulator(seed=5, categories=scenario()["categories"] | {
        category: {"kind": KIND[category], "labels": LABELS, "agreement": 1.0}})), HAIKU, category)
    assert checked(category, right) is None
    for kind in ("invalid", "refusal", "truncated", "empty"):
        client = sdk(simulator(**scenario([kind])))
        got = ask(client, HAIKU, category, stream=stream)
        assert checked(category, got).reason == kind, (kind, got)
        assert got.stop_reason == {"refusal": "refusal", "truncated": "max_tokens"}.get(kind, "end_turn")
        text = text_of(got)
        if kind == "truncated":
            assert 0 < len(text) < len(text_of(right)) and text_of(right).startswith(text)
        if kind == "empty":
            assert text == "" and blocks(got) in ([], [("text", "")])
        if kind == "refusal":
            assert text == "I can't help with that request."
        if kind == "invalid" and category == "sentiment":
            assert text == "MAYBE"
        if kind == "invalid" and category == "invoice":
            assert text == text_of(right)[:len(text_of(right)) // 2]
        assert blocks(got) == blocks(ask(client, HAIKU, category, stream=not stream))  # same both ways


def test_empty_answers_come_in_both_shapes(simulator):
    client = sdk(simulator(**scenario(["empty"])))
    shapes = {len(ask(client, HAIKU, "sentiment", f"case {i}", stream=i % 2 == 0).content) for i in range(40)}
    assert shapes == {0, 1}


def test_a_rate_breaks_that_share_deterministically_and_the_reference_never(simulator):
    client = sdk(simulator(**scenario(rate=0.3)))
    answers = [ask(client, HAIKU, "sentiment", f"review {i}") for i in range(300)]
    broken = [checked("sentiment", a) for a in answers]
    share = sum(b is not None for b in broken) / len(broken)
    assert 0.22 < share < 0.38
    assert {b.reason for b in broken if b} == {"invalid", "refusal", "truncated", "empty"}
    again = [ask(client, HAIKU, "sentiment", f"review {i}") for i in range(40)]
    assert [blocks(a) for a in again] == [blocks(a) for a in answers[:40]]
    assert not any(checked("sentiment", ask(client, OPUS, "sentiment", f"review {i}")) for i in range(100))


def test_models_have_their_own_broken_and_a_listed_reference_breaks(simulator):
    categories = scenario(["invalid"], rate=1.0)["categories"]
    categories["sentiment"]["models"] = {SONNET: {"broken": {"rate": 1.0, "kinds": ["refusal"]}},
                                         OPUS: {"broken": {"rate": 1.0, "kinds": ["truncated"]}}}
    server = simulator(seed=5, categories=categories, reference_models=[OPUS])
    client = sdk(server)
    assert text_of(ask(client, HAIKU, "sentiment")) == "MAYBE"
    assert ask(client, SONNET, "sentiment").stop_reason == "refusal"
    assert ask(client, OPUS, "sentiment").stop_reason == "max_tokens"
    assert checked("invoice", ask(client, OPUS, "invoice")) is None  # listed only in sentiment


def test_a_reference_listed_only_for_broken_keeps_its_answers(simulator):
    plain = sdk(simulator(seed=5, categories={"sentiment": {"labels": LABELS, "agreement": 0.5}}))
    listed = sdk(simulator(seed=5, categories={"sentiment": {
        "labels": LABELS, "agreement": 0.5, "models": {OPUS: {"broken": {"rate": 0.0}}}}}))
    for model in (OPUS, HAIKU):
        answers = [[text_of(ask(c, model, "sentiment", f"r{i}")) for i in range(30)] for c in (plain, listed)]
        assert answers[0] == answers[1]


def test_script_turns_broken_answers_on_and_off(simulator):
    server = simulator(seed=5, categories={"sentiment": {"labels": LABELS, "agreement": 1.0}})
    client = sdk(server)
    assert checked("sentiment", ask(client, HAIKU, "sentiment")) is None
    scripted = httpx2.post(f"{server.base_url}/_sim/script", json={"categories": {"sentiment": {
        "broken": {"rate": 1.0, "kinds": ["truncated"]},
        "models": {SONNET: {"broken": {"rate": 1.0, "kinds": ["empty"]}},
                   OPUS: {"broken": {"rate": 1.0, "kinds": ["refusal"]}}}}}}).json()
    assert scripted["categories"]["sentiment"]["broken"] == {"rate": 1.0, "kinds": ["truncated"]}
    assert set(scripted["categories"]["sentiment"]["broken_models"]) == {SONNET, OPUS}
    for stream in (False, True):
        assert checked("sentiment", ask(client, HAIKU, "sentiment", stream=stream)).reason == "truncated"
        assert checked("sentiment", ask(client, SONNET, "sentiment", stream=stream)).reason == "empty"
        assert checked("sentiment", ask(client, OPUS, "sentiment", stream=stream)).reason == "refusal"
    httpx2.post(f"{server.base_url}/_sim/script", json={"categories": {"sentiment": {
        "broken": None, "models": {SONNET: {"agreement": 1.0}, OPUS: {"broken": None}}}}}).raise_for_status()
    assert checked("sentiment", ask(client, HAIKU, "sentiment")) is None
    assert checked("sentiment", ask(client, SONNET, "sentiment")).reason == "empty"  # kept with its agreement
    assert checked("sentiment", ask(client, OPUS, "sentiment")) is None


@pytest.mark.parametrize(("broken", "problem"), [
    ({"rate": 2}, "categories.sentiment.broken.rate: must be a number between 0 and 1"),
    ({"kinds": ["invalid"]}, "categories.sentiment.broken.rate: must be a number"),
    ({"rate": 0.1, "kinds": ["slow"]}, "categories.sentiment.broken.kinds: must be a non-empty list"),
    ({"rate": 0.1, "kind": ["empty"]}, "categories.sentiment.broken.kind: unknown field"),
    ("often", "categories.sentiment.broken: must be a mapping"),
])
def test_bad_broken_specs_name_the_field(simulator, broken, problem):
    with pytest.raises(ValueError, match=problem.replace(".", r"\.")):
        Scenario.from_dict({"categories": {"sentiment": {"broken": broken}}})
    server = simulator(seed=5, categories={"sentiment": {"labels": LABELS}})
    bad = httpx2.post(f"{server.base_url}/_sim/script",
                      json={"categories": {"sentiment": {"broken": broken}}})
    assert bad.status_code == 400 and problem in bad.json()["error"]["message"]


def test_the_chat_endpoint_reads_a_refusal_as_content_filter(simulator):
    server = simulator(**scenario(["refusal"]))
    chat = httpx2.post(f"{server.base_url}/v1/chat/completions", headers={"x-api-key": API_KEY}, json={
        "model": HAIKU, "messages": [{"role": "system", "content": "sentiment: answer"},
                                     {"role": "user", "content": "case 1"}]}).json()
    assert chat["choices"][0]["finish_reason"] == "content_filter"
    assert Broken.parse({"rate": 0.5}, "x").kinds == ("invalid", "refusal", "truncated", "empty")
