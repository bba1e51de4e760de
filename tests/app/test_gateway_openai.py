"""OpenAI-compatible apps through the gateway (issue 26, item 3): the real ``openai`` SDK pointed at a
real ``tierguard gateway`` in front of the simulator, JSON and streamed, with a real Celery worker
shadowing each sampled call as its Messages equivalent and recording it as one compared sample."""

import json

import httpx2
import openai
import pytest
import redis
from sqlmodel import select

from tests.app.gatewayparts import LABELS, SCENARIO, start
from tests.helpers import API_KEY, samples, wait_until
from tierguard.store.db import make_engine, session
from tierguard.store.tables import Sample

POLICY = {"defaults": {"sample_rate": 1.0}, "payloads": {"store": "excerpt"},
          "categories": {"sentiment": {"comparator": {"type": "label", "labels": LABELS}}}}
CATEGORY = {"x-tierguard-category": "sentiment"}
SYSTEM = "sentiment: classify"
ROUTED, CALLER = "claude-haiku-4-5", "claude-opus-4-7"


def ask(text: str) -> dict:
    return {"model": CALLER, "max_tokens": 8,
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]}


def received(sim, path: str) -> list[dict]:
    """The bodies the simulator received on ``path``, oldest first."""
    return [json.loads(r["body"]) for r in httpx2.get(sim.base_url + "/_sim/requests").json()["requests"]
            if r["path"] == path]


def traffic(redis_url: str, metric: str, model: str = ROUTED) -> int:
    r = redis.Redis.from_url(redis_url)
    return sum(int(r.hget(key, f"sentiment|{model}|{metric}") or 0)
               for key in r.scan_iter("tierguard:traffic:*"))


def rows(url: str) -> list[Sample]:
    with session(make_engine(url)) as s:
        return sorted(s.exec(select(Sample)), key=lambda r: r.requested_at)


def streamed(client: openai.OpenAI, text: str, **more) -> tuple[str, str, object]:
    """(model, text, usage) of a streamed chat completion."""
    model, parts, usage = "", [], None
    for chunk in client.chat.completions.create(**ask(text), stream=True, **more):
        model = chunk.model or model
        parts += [c.delta.content or "" for c in chunk.choices]
        usage = chunk.usage or usage
    return model, "".join(parts), usage


def test_the_openai_sdk_is_routed_counted_and_shadowed_json_and_streamed(stack, tmp_path, simulator,
                                                                         sqlite_url, redis_url):
    sim = simulator(**SCENARIO)
    stack.configure(policy=POLICY, database_url=sqlite_url, base_url=sim.base_url)
    stack.start_worker(concurrency=4)
    gw = start(stack, tmp_path)
    by_header = openai.OpenAI(base_url=gw.base + "/v1", api_key=API_KEY, default_headers=CATEGORY,
                              max_retries=0)
    by_path = openai.OpenAI(base_url=gw.base + "/c/sentiment/v1", api_key=API_KEY, max_retries=0)
    plain = openai.OpenAI(base_url=gw.base + "/v1", api_key=API_KEY, max_retries=0)

    answer = by_header.chat.completions.create(**ask("one"))
    assert answer.model == ROUTED and answer.choices[0].message.content in LABELS
    model, text_two, usage = streamed(by_path, "two", stream_options={"include_usage": True})
    assert model == ROUTED and text_two in LABELS and usage.prompt_tokens > 0
    model, text_three, none = streamed(plain, "three", extra_headers=CATEGORY)
    assert model == ROUTED and text_three in LABELS and none is None  # no include_usage: no usage
    assert plain.chat.completions.create(**ask("four")).model == CALLER  # no category: untouched

    # Routed at the simulator; each sampled call shadowed as its Messages equivalent, on the reference.
    assert [b["model"] for b in received(sim, "/v1/chat/completions")] == [ROUTED] * 3 + [CALLER]
    wait_until(lambda: samples(sqlite_url) == 3, 60, "3 samples")
    shadows = received(sim, "/v1/messages")  # in the order the worker sent them
    assert sorted((b["model"], b["system"], b["max_tokens"], b["messages"][0]["content"], len(b["messages"]))
                  for b in shadows) == [(CALLER, SYSTEM, 8, text, 1) for text in ("one", "three", "two")]
    assert all(b["messages"][0]["role"] == "user" and set(b) == {"model", "system", "max_tokens", "messages"}
               for b in shadows)  # the equivalent request exactly: no stream, nothing ignored
    found = rows(sqlite_url)
    assert [(r.served_model, r.shadow_model, r.comparator, r.agree, r.error) for r in found] == [
        (ROUTED, CALLER, "label", True, None)] * 3
    assert [r.primary_excerpt for r in found] == [answer.choices[0].message.content, text_two, text_three]
    assert found[0].primary_input_tokens == answer.usage.prompt_tokens
    assert found[1].primary_input_tokens == usage.prompt_tokens and found[2].primary_input_tokens is None
    # Production's tokens counted from each answer's usage; a stream without it counts its call only.
    wait_until(lambda: traffic(redis_url, "calls") == 3, 20, "3 calls counted")
    wait_until(lambda: traffic(redis_url, "input_tokens") == answer.usage.prompt_tokens + usage.prompt_tokens,
               20, "the input tokens of the answers with usage counted")
    assert traffic(redis_url, "output_tokens") == answer.usage.completion_tokens + usage.completion_tokens
    stats = gw.stats()
    assert stats["published"] == 3 and stats["uncategorized"] == 1 and not stats.get("untranslatable")
    assert not gw.errors()


@pytest.mark.parametrize("stream", [False, True])
def test_a_candidate_that_disagrees_is_recorded_as_a_disagreement(stack, tmp_path, simulator, sqlite_url,
                                                                  stream):
    sim = simulator(categories={"sentiment": {"kind": "label", "labels": LABELS, "agreement": 0.0}})
    stack.configure(policy=POLICY, database_url=sqlite_url, base_url=sim.base_url)
    stack.start_worker(concurrency=2)
    gw = start(stack, tmp_path)
    client = openai.OpenAI(base_url=gw.base + "/c/sentiment/v1", api_key=API_KEY, max_retries=0)
    text = "The parcel arrived damaged."
    if stream:
        served = streamed(client, text)[1]
    else:
        served = client.chat.completions.create(**ask(text)).choices[0].message.content
    wait_until(lambda: samples(sqlite_url) == 1, 60, "1 sample")
    (row,) = rows(sqlite_url)
    assert (row.served_model, row.shadow_model, row.agree, row.error) == (ROUTED, CALLER, False, None)
    assert row.primary_excerpt == served and row.shadow_excerpt in LABELS and row.shadow_excerpt != served
    assert "label" in row.comparator and not gw.errors()


def test_an_untranslatable_request_is_served_untouched_counted_and_not_shadowed(stack, tmp_path,
                                                                                sim_and_env):
    sim = sim_and_env()
    gw = start(stack, tmp_path)
    client = openai.OpenAI(base_url=gw.base + "/v1", api_key=API_KEY, default_headers=CATEGORY,
                           max_retries=0)
    parts = [{"type": "text", "text": "What does this file say?"},
             {"type": "file", "file": {"file_id": "file-abc"}}]  # no Messages equivalent here
    request = {"model": CALLER, "max_tokens": 8,
               "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": parts}]}
    assert client.chat.completions.create(**request).model == CALLER  # not routed
    assert received(sim, "/v1/chat/completions")[-1] == request  # the body as the caller sent it
    with pytest.raises(openai.BadRequestError, match="n: only 1"):  # the API's own answer, relayed
        client.chat.completions.create(**ask("two answers"), n=2)
    assert client.chat.completions.create(**ask("one")).model == ROUTED  # a translatable one: routed
    wait_until(lambda: gw.stats().get("submitted") == 1, 10, "the translatable call shadowed")
    stats = gw.stats()
    assert stats["untranslatable"] == 2 and stats["submitted"] == 1 and stats["internal_errors"] == 0
    logged = [line for line in gw.log.read_text().splitlines() if "untranslatable" in line]
    assert len(logged) == 1 and "messages[1].content[1].type" in logged[0]  # once, naming the field
    assert "file-abc" not in gw.log.read_text()


def test_a_failing_chat_answer_is_escalated_json_and_buffered_stream(stack, tmp_path, simulator,
                                                                    sqlite_url):
    broken = {ROUTED: {"agreement": 1.0, "broken": {"rate": 1.0, "kinds": ["invalid"]}}}
    sim = simulator(categories={"sentiment": {"kind": "label", "labels": LABELS, "agreement": 1.0,
                                              "models": broken}})
    policy = {"defaults": {"sample_rate": 0.0}, "categories": {"sentiment": {
        "comparator": {"type": "label", "labels": LABELS}, "escalate_on": ["invalid"],
        "buffer_streams": True}}}
    stack.configure(policy=policy, database_url=sqlite_url, base_url=sim.base_url)
    gw = start(stack, tmp_path)
    client = openai.OpenAI(base_url=gw.base + "/c/sentiment/v1", api_key=API_KEY, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(**ask("one"))
    answer = raw.parse()
    assert raw.headers["x-tierguard-escalated"] == "invalid"
    assert answer.model == CALLER and answer.choices[0].message.content in LABELS
    model, text, _ = streamed(client, "two")  # buffered, checked, then relayed as the chat chunks
    assert model == CALLER and text in LABELS
    assert [b["model"] for b in received(sim, "/v1/chat/completions")] == [ROUTED, CALLER] * 2
    stats = gw.stats()
    assert stats["escalated"] == 2 and stats["escalated_invalid"] == 2 and not gw.errors()
