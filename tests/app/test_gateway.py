"""The gateway as apps use it: a real ``tierguard gateway`` process in front of the simulator."""

import asyncio
import json
import os
import re
import shutil
import socket
import subprocess

import anthropic
import httpx2
import pytest
import sqlalchemy as sa
from sqlmodel import select

from tests.helpers import API_KEY, samples, wait_until
from tierguard.sim.servers import free_port
from tierguard.store.db import make_engine, session
from tierguard.store.tables import Sample

LABELS = ["POSITIVE", "NEGATIVE"]
SCENARIO = {"categories": {"sentiment": {"kind": "label", "labels": LABELS, "agreement": 1.0}}}
POLICY = {"defaults": {"sample_rate": 1.0},
          "categories": {"sentiment": {"comparator": {"type": "label", "labels": LABELS}}}}
HEADER = {"x-tierguard-category": "sentiment"}
BODY = {"model": "claude-opus-4-7", "max_tokens": 8, "system": "sentiment: classify",
        "messages": [{"role": "user", "content": "The parcel arrived damaged."}]}


def sim_stats(sim):
    return httpx2.get(sim.base_url + "/_sim/stats").json()


def gw_stats(base):
    return httpx2.get(base + "/tierguard/stats").json()


def test_python_sdk_sync_async_and_streams_are_routed_and_each_shadowed_once(stack, simulator,
                                                                             sqlite_url):
    sim = simulator(**SCENARIO)
    stack.configure(policy=POLICY, database_url=sqlite_url, base_url=sim.base_url)
    stack.start_worker(concurrency=8)
    base = stack.start_gateway()
    client = anthropic.Anthropic(base_url=base, api_key=API_KEY, default_headers=HEADER, max_retries=0)
    texts = []
    message = client.messages.create(**{**BODY, "messages": [{"role": "user", "content": "one"}]})
    assert message.model == "claude-haiku-4-5"  # routed: the policy's candidate, not the body's model
    texts.append(message.content[0].text)
    stream = client.messages.create(**{**BODY, "messages": [{"role": "user", "content": "two"}]},
                                    stream=True)
    texts.append("".join(e.delta.text for e in stream if e.type == "content_block_delta"))
    with client.messages.stream(**{**BODY, "messages": [{"role": "user", "content": "three"}]}) as s:
        texts.append(s.get_final_message().content[0].text)

    async def run_async():
        aclient = anthropic.AsyncAnthropic(base_url=base, api_key=API_KEY, default_headers=HEADER)
        m = await aclient.messages.create(**{**BODY, "messages": [{"role": "user", "content": "four"}]})
        out = [m.content[0].text]
        async with aclient.messages.stream(**{**BODY, "messages": [{"role": "user",
                                                                     "content": "five"}]}) as s:
            out.append((await s.get_final_message()).content[0].text)
        return out

    texts += asyncio.run(run_async())
    assert all(t in LABELS for t in texts), texts
    wait_until(lambda: samples(sqlite_url) == 5, 60, "5 samples")
    with session(make_engine(sqlite_url)) as s:
        rows = list(s.exec(select(Sample)))
    assert sorted((r.served_model, r.shadow_model, r.agree, r.error) for r in rows) == [
        ("claude-haiku-4-5", "claude-opus-4-7", True, None)] * 5
    assert all(r.primary_output_tokens and r.primary_input_tokens for r in rows)
    stats = gw_stats(base)
    assert stats["published"] == 5 and stats["internal_errors"] == 0
    # The caller's own credentials and version reached the upstream; the category header did not.
    for seen in sim_stats(sim)["recent_headers"]:
        assert seen["authorization"] == f"Bearer {API_KEY}" and seen["anthropic-version"]
        assert "x-tierguard-category" not in seen


def test_raw_requests_pass_through_and_errors_keep_their_status(stack, simulator, sqlite_url):
    sim = simulator(**SCENARIO)
    stack.configure(policy=POLICY, database_url=sqlite_url, base_url=sim.base_url)
    base = stack.start_gateway()
    headers = {"x-api-key": API_KEY, "anthropic-version": "2023-06-01"}
    # No category header: untouched (the body's model stays), not shadowed, counted.
    plain = httpx2.post(base + "/v1/messages", json=BODY, headers=headers)
    assert plain.status_code == 200 and plain.json()["model"] == "claude-opus-4-7"
    assert sim_stats(sim)["recent_headers"][-1]["x-api-key"] == API_KEY
    # Other paths pass through.
    direct = httpx2.post(sim.base_url + "/v1/messages/count_tokens", json=BODY, headers=headers)
    counted = httpx2.post(base + "/v1/messages/count_tokens", json=BODY, headers=headers)
    assert counted.json() == direct.json() and counted.json()["input_tokens"] > 0
    assert httpx2.get(base + "/v1/models?limit=5", headers=headers).json()["data"]
    assert httpx2.get(base + "/v1/nowhere", headers=headers).status_code == 404
    # A body the API rejects, with the category: its answer as it is.
    bad = httpx2.post(base + "/v1/messages", content=b"{not json", headers={**headers, **HEADER})
    assert bad.status_code == 400 and bad.json()["type"] == "error"
    missing = httpx2.post(base + "/v1/messages", json={"model": "x"}, headers={**headers, **HEADER})
    assert missing.status_code == 400
    # An upstream error status and its headers reach the caller unchanged.
    httpx2.post(sim.base_url + "/_sim/fail", json={"status": 529, "count": 1, "retry_after": 3})
    overloaded = httpx2.post(base + "/v1/messages", json=BODY, headers={**headers, **HEADER})
    assert overloaded.status_code == 529 and overloaded.headers["retry-after"] == "3"
    assert overloaded.json()["error"]["type"] == "overloaded_error"
    assert overloaded.headers["request-id"].startswith("req_")
    stats = gw_stats(base)
    assert stats["uncategorized"] == 2 and stats["uncategorized_unreadable_body"] == 1


def test_upstream_down_is_a_502_and_redis_down_still_serves(stack, simulator, sqlite_url):
    sim = simulator(**SCENARIO)
    stack.configure(policy=POLICY, database_url=sqlite_url, base_url=sim.base_url)
    dead = stack.start_gateway(TIERGUARD_UPSTREAM_URL=f"http://127.0.0.1:{free_port()}")
    down = httpx2.post(dead + "/v1/messages", json=BODY, headers={"x-api-key": API_KEY, **HEADER})
    assert down.status_code == 502
    assert down.json()["type"] == "error" and down.json()["error"]["type"] == "api_error"
    no_redis = stack.start_gateway(TIERGUARD_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    client = anthropic.Anthropic(base_url=no_redis, api_key=API_KEY, default_headers=HEADER,
                                 max_retries=0)
    for _ in range(5):
        assert client.messages.create(**BODY).model == "claude-haiku-4-5"
    wait_until(lambda: gw_stats(no_redis).get("dropped_broker_down") == 5, 10, "5 dropped shadows")
    assert httpx2.get(no_redis + "/healthz").status_code == 200


def raw_stream(base, body, headers, events):
    """Open a streamed request on a plain socket, read ``events`` SSE events, and return them."""
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    payload = httpx2.Request("POST", base + "/v1/messages", json=body, headers=headers)
    head = f"POST /v1/messages HTTP/1.1\r\nhost: {host}\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in payload.headers.items() if k != "host") + "\r\n"
    sock.sendall(head.encode() + payload.read())
    data = b""
    while data.count(b"\n\n") < events + 1:  # the response head ends in a blank line too
        data += sock.recv(65536)
    return sock, data


def test_a_caller_leaving_mid_stream_cancels_upstream_and_nothing_is_shadowed(stack, simulator,
                                                                              sqlite_url):
    sim = simulator(**SCENARIO, stream_event_ms=600)  # 3.6 s: room for a busy host to notice
    stack.configure(policy=POLICY, database_url=sqlite_url, base_url=sim.base_url)
    base = stack.start_gateway()
    sock, data = raw_stream(base, {**BODY, "stream": True}, {"x-api-key": API_KEY, **HEADER}, 1)
    assert b"event: message_start" in data
    # Not buffered: the first event is here while the upstream is still streaming.
    assert sim_stats(sim)["streams"] == {}
    sock.close()
    wait_until(lambda: sim_stats(sim)["streams"].get("aborted") == 1, 10, "the upstream stream to abort")
    stats = gw_stats(base)
    assert stats["caller_left"] == 1 and stats.get("submitted", 0) == 0


def test_a_stream_through_the_gateway_is_the_same_bytes_as_direct(stack, simulator, sqlite_url):
    sim = simulator(**SCENARIO)
    stack.configure(policy=POLICY, database_url=sqlite_url, base_url=sim.base_url)
    base = stack.start_gateway()
    body = {**BODY, "model": "claude-haiku-4-5", "stream": True}  # what the route makes of it
    headers = {"x-api-key": API_KEY, "anthropic-version": "2023-06-01"}
    direct = httpx2.post(sim.base_url + "/v1/messages", json=body, headers=headers)
    routed = httpx2.post(base + "/v1/messages", json=body, headers={**headers, **HEADER})
    assert routed.headers["content-type"] == "text/event-stream"

    def same_ids(text):  # the simulator gives every message a fresh id
        return re.sub(r'"msg_[0-9a-f]+"', '"msg_ID"', text)

    assert same_ids(routed.text) == same_ids(direct.text)
    assert routed.text.count("event: ") == direct.text.count("event: ") >= 6


def test_a_drift_seen_only_through_the_gateway_flips_its_routing(stack, simulator, postgres_url):
    labels = ["BILLING", "SHIPPING", "TECHNICAL"]
    sim = simulator(categories={"routing": {"kind": "label", "labels": labels, "agreement": 0.98,
                                            "drift": {"after": 150, "agreement": 0.5}}})
    stack.configure(policy={"defaults": {"sample_rate": 1.0, "min_samples": 50},
                            "categories": {"routing": {"comparator": {"type": "label",
                                                                      "labels": labels}}}},
                    database_url=postgres_url, base_url=sim.base_url)
    stack.start_worker(concurrency=16)
    base = stack.start_gateway()
    client = anthropic.Anthropic(base_url=base, api_key=API_KEY, max_retries=0,
                                 default_headers={"x-tierguard-category": "routing"})
    for i in range(600):
        answer = client.messages.create(model="any", max_tokens=8, system="routing: answer the queue",
                                        messages=[{"role": "user", "content": f"ticket {i}"}],
                                        stream=i % 2 == 0)
        if i % 2 == 0:
            list(answer)  # read the stream to its end
        if i % 100 == 99:
            wait_until(lambda i=i: samples(postgres_url) >= i - 100, 60, "the worker to catch up")
    wait_until(lambda: samples(postgres_url) == 600, 60, "600 samples, one per request")
    with session(make_engine(postgres_url)) as s:
        changes = s.execute(sa.text("SELECT from_model, to_model FROM route_change")).all()
        duplicates = s.execute(sa.text("SELECT count(*) - count(DISTINCT job_id) FROM sample")).scalar()
    assert changes == [("claude-haiku-4-5", "claude-opus-4-7")] and duplicates == 0
    wait_until(lambda: client.messages.create(
        model="any", max_tokens=8, system="routing: x",
        messages=[{"role": "user", "content": "after"}]).model == "claude-opus-4-7", 10,
        "the gateway to follow the flip")


TS_CLIENT = r"""
const Anthropic = require("@anthropic-ai/sdk").default ?? require("@anthropic-ai/sdk");
const client = new Anthropic({ baseURL: process.env.GATEWAY, apiKey: process.env.KEY, maxRetries: 0,
                               defaultHeaders: { "x-tierguard-category": "sentiment" } });
const body = { model: "claude-opus-4-7", max_tokens: 8, system: "sentiment: classify",
               messages: [{ role: "user", content: "from typescript" }] };
(async () => {
  const plain = await client.messages.create(body);
  const stream = await client.messages.create({ ...body, stream: true,
                                                messages: [{ role: "user", content: "streamed" }] });
  let streamed = "";
  for await (const event of stream) {
    if (event.type === "content_block_delta") streamed += event.delta.text;
  }
  const helper = client.messages.stream({ ...body, messages: [{ role: "user", content: "helper" }] });
  const final = await helper.finalMessage();
  console.log(JSON.stringify({ model: plain.model, plain: plain.content[0].text, streamed,
                               helper: final.content[0].text }));
})().catch((err) => { console.error(err); process.exit(1); });
"""


@pytest.fixture(scope="session")
def typescript_sdk(tmp_path_factory):
    """The official TypeScript SDK from the npm registry, installed into a temporary folder."""
    node, npm = shutil.which("node"), shutil.which("npm")
    assert node and npm, "the TypeScript SDK test needs node and npm on PATH (Node 18 or newer)"
    folder = tmp_path_factory.mktemp("typescript-sdk")
    done = subprocess.run([npm, "install", "--prefix", str(folder), "--no-audit", "--no-fund",
                           "@anthropic-ai/sdk"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"npm install @anthropic-ai/sdk failed:\n{done.stderr[-2000:]}"
    script = folder / "client.js"
    script.write_text(TS_CLIENT)
    return node, script


def test_the_typescript_sdk_streams_through_the_gateway(stack, simulator, sqlite_url, typescript_sdk):
    node, script = typescript_sdk
    sim = simulator(**SCENARIO)
    stack.configure(policy=POLICY, database_url=sqlite_url, base_url=sim.base_url)
    stack.start_worker(concurrency=4)
    base = stack.start_gateway()
    done = subprocess.run([node, str(script)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "GATEWAY": base, "KEY": API_KEY}, cwd=script.parent)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["model"] == "claude-haiku-4-5"
    assert {out["plain"], out["streamed"], out["helper"]} <= set(LABELS)
    wait_until(lambda: samples(sqlite_url) == 3, 60, "3 samples from the TypeScript client")
    from_node = [h for h in sim_stats(sim)["recent_headers"] if h.get("user-agent", "").startswith(
        "Anthropic/JS")]
    assert len(from_node) == 3
    assert all(API_KEY in h.get("x-api-key", h.get("authorization", "")) for h in from_node)
