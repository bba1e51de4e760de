"""The gateway as Bedrock's and Vertex's endpoint (issue 26, item 2): the SDK's own AnthropicBedrock
and AnthropicVertex clients pointed at a real gateway in front of the simulator; routed by the model
in the path, the body and credentials untouched, sampled calls shadowed by a real worker."""

from __future__ import annotations

import json

import anthropic
import httpx2
from sqlmodel import select

from tests.app.gatewayparts import LABELS, POLICY, SCENARIO, start
from tests.helpers import samples, wait_until
from tierguard.store.db import make_engine, session
from tierguard.store.tables import Sample

CATEGORY = {"x-tierguard-category": "sentiment"}
ASK = {"max_tokens": 8, "system": "sentiment: classify",
       "messages": [{"role": "user", "content": "The parcel arrived damaged."}]}
HAIKU_BEDROCK = "global.anthropic.claude-haiku-4-5-20251001-v1:0"
VERTEX_MODELS = "/v1/projects/proj/locations/us-east5/publishers/anthropic/models/"


def seen(sim) -> list[dict]:
    return httpx2.get(sim.base_url + "/_sim/requests").json()["requests"]


def test_bedrock_and_vertex_calls_are_routed_and_shadowed(stack, simulator, sqlite_url, tmp_path,
                                                         monkeypatch):
    sim = simulator(**SCENARIO)
    stack.configure(policy=POLICY, database_url=sqlite_url, base_url=sim.base_url)
    stack.start_worker(concurrency=4)
    gw = start(stack, tmp_path)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDSIMULATED")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "simulated-secret")
    bedrock = anthropic.AnthropicBedrock(aws_region="us-east-1", base_url=gw.base, default_headers=CATEGORY,
                                         max_retries=0)
    vertex = anthropic.AnthropicVertex(region="us-east5", project_id="proj", access_token="ya29.token",
                                       base_url=gw.base + "/c/sentiment/v1", max_retries=0)
    plain = bedrock.messages.create(model="us.anthropic.claude-opus-4-7", **ASK)
    with bedrock.messages.stream(model="us.anthropic.claude-opus-4-7", **ASK,
                                 extra_headers={"anthropic-beta": "context-1m-2025-08-07"}) as stream:
        streamed = stream.get_final_message()  # botocore decodes the frames the gateway relayed
    assert plain.model == streamed.model == HAIKU_BEDROCK  # the routed model's id, in the path
    assert plain.content[0].text == streamed.content[0].text in LABELS
    v_plain = vertex.messages.create(model="claude-opus-4-7", **ASK)
    with vertex.messages.stream(model="claude-opus-4-7", **ASK) as stream:
        v_streamed = stream.get_final_message()
    assert v_plain.model == v_streamed.model == "claude-haiku-4-5@20251001"
    assert v_plain.content[0].text == v_streamed.content[0].text == plain.content[0].text

    upstream = seen(sim)[:4]
    assert [r["path"] for r in upstream] == [
        f"/model/{HAIKU_BEDROCK}/invoke", f"/model/{HAIKU_BEDROCK}/invoke-with-response-stream",
        VERTEX_MODELS + "claude-haiku-4-5@20251001:rawPredict",
        VERTEX_MODELS + "claude-haiku-4-5@20251001:streamRawPredict"]
    assert [r["auth"] for r in upstream] == ["AWS4-HMAC-SHA256"] * 2 + ["Bearer"] * 2  # passed through
    sent = [json.loads(r["body"]) for r in upstream]
    assert all("model" not in b and "anthropic_version" in b for b in sent)  # bodies untouched
    assert sent[1]["anthropic_beta"] == ["context-1m-2025-08-07"]

    wait_until(lambda: samples(sqlite_url) == 4, 30, "the four platform calls shadowed")
    with session(make_engine(sqlite_url)) as s:
        rows = list(s.exec(select(Sample)))
    assert {(r.served_model, r.shadow_model, r.agree, r.error) for r in rows} == {
        ("claude-haiku-4-5", "claude-opus-4-7", True, None)}
    shadows = [r for r in seen(sim) if r["path"] == "/v1/messages"]
    assert len(shadows) == 4  # the worker asked Anthropic's API with Messages bodies
    bodies = [json.loads(r["body"]) for r in shadows]
    assert {b["model"] for b in bodies} == {"claude-opus-4-7"}
    assert not any({"anthropic_version", "anthropic_beta"} & b.keys() for b in bodies)
    assert sorted(r["headers"].get("anthropic-beta", "") for r in shadows) == [""] * 3 + [
        "context-1m-2025-08-07"]


def test_what_cannot_be_routed_goes_as_sent(stack, simulator, sqlite_url, tmp_path):
    sim = simulator(**SCENARIO)
    stack.configure(policy=POLICY, database_url=sqlite_url, base_url=sim.base_url)
    gw = start(stack, tmp_path)
    vertex = anthropic.AnthropicVertex(region="us-east5", project_id="proj", access_token="t",
                                       base_url=gw.base + "/v1", max_retries=0)
    assert vertex.messages.create(model="claude-opus-4-7", **ASK).model == "claude-opus-4-7"  # no category
    named = vertex.with_options(default_headers=CATEGORY)
    assert named.messages.create(model="claude-3-unknown@2024", **ASK).model == "claude-3-unknown@2024"
    body = json.dumps({**ASK, "anthropic_version": "vertex-2023-10-16"})
    raw = httpx2.post(gw.base + VERTEX_MODELS + "claude-opus-4-7:rawPredict", content=body[:-3],
                      headers={**CATEGORY, "authorization": "Bearer t"})
    assert raw.status_code == 400  # the platform answers what it cannot read
    stats = httpx2.get(gw.base + "/tierguard/stats").json()
    assert stats["uncategorized_no_category"] == 1 and stats["uncategorized_unknown_model_id"] == 1
    assert stats["uncategorized_unreadable_body"] == 1
    assert [r["path"].rpartition("/")[2] for r in seen(sim)] == [
        "claude-opus-4-7:rawPredict", "claude-3-unknown@2024:rawPredict"]
