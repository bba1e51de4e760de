"""A bounded gateway (issue 25), past its door: deep JSON, broken bodies, callers that leave
before the answer, answers that take too long, streams too long to assemble.

Each test drives a real ``tierguard gateway`` process in front of the real simulator, or the real
stream assembler, and failed on the gateway before it.
"""

import gzip
import http.client
import json
import re
import socket
import time

import anthropic
import httpx2
import redis

import tierguard
from tests.app.gatewayparts import (
    BODY,
    HEADERS,
    LABELS,
    POLICY,
    ROUTED,
    SCENARIO,
    request_bytes,
    seen,
    sim_stats,
    start,
    upstream_connections,
)
from tests.helpers import API_KEY, wait_until
from tierguard.app.stream import Assembler, SSEParser
from tierguard.config import get_settings
from tierguard.policy import parse_policy


def deep(depth: int) -> bytes:
    """BODY with ``metadata`` nested so that the whole body is ``depth`` levels deep."""
    raw = json.dumps({**BODY, "metadata": {"n": "HOLE"}}).encode()
    return raw.replace(b'"HOLE"', b"[" * (depth - 2) + b"]" * (depth - 2))


def test_json_nested_past_the_limit_is_a_400_never_a_500(stack, sim_and_env, tmp_path):
    sim = sim_and_env()
    gw = start(stack, tmp_path)
    brackets_in_text = json.dumps({**BODY, "messages": [{"role": "user", "content": "[{" * 5000}]})
    with httpx2.Client(base_url=gw.base, headers=HEADERS, timeout=30) as client:
        assert client.post("/v1/messages", content=deep(128)).status_code == 200
        assert client.post("/v1/messages", content=brackets_in_text).status_code == 200
        refused = [client.post("/v1/messages", content=deep(n)) for n in (129, 900, 5000)]
        refused.append(client.post("/v1/messages", content=gzip.compress(deep(900)),
                                   headers={"content-encoding": "gzip"}))
    for answer in refused:
        assert answer.status_code == 400, answer.text
        error = answer.json()
        assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
        assert "128" in error["error"]["message"]
        assert "TIERGUARD_GATEWAY_MAX_JSON_DEPTH" in error["error"]["message"]
    assert len(seen(sim)) == 2  # none of the refused went upstream
    stats = gw.stats()
    assert stats["json_too_deep"] == 4
    wait_until(lambda: gw.stats().get("published") == 2, 10, "both accepted calls published")
    stats = gw.stats()
    assert stats["internal_errors"] == 0 and not stats.get("dropped_unserializable")
    assert not gw.errors()


def test_malformed_bodies_are_relayed_and_the_connection_stays_usable(stack, sim_and_env, tmp_path):
    sim = sim_and_env()
    gw = start(stack, tmp_path)
    conn = http.client.HTTPConnection(*gw.address, timeout=10)
    conn.connect()
    first = conn.sock
    answers = []
    for body in (b"{not json", b'{"model": "\xff\xfe", "max_tokens": 8}', json.dumps(BODY).encode()):
        conn.request("POST", "/v1/messages", body=body, headers=HEADERS)
        response = conn.getresponse()
        answers.append((response.status, json.loads(response.read())))
        assert conn.sock is first, "the gateway closed the kept-alive connection"
    conn.close()
    assert [status for status, _ in answers] == [400, 400, 200]
    # The API's own answers, relayed (the simulator's words for a body that is not JSON).
    assert [error["error"]["message"] for _, error in answers[:2]] == ["body is not JSON"] * 2
    assert len(seen(sim)) == 1
    assert gw.stats()["uncategorized_unreadable_body"] == 2
    assert not gw.errors(), gw.errors()


def test_a_caller_leaving_before_the_answer_cancels_the_upstream_call(stack, sim_and_env, tmp_path):
    sim = sim_and_env()
    gw = start(stack, tmp_path)
    httpx2.post(sim.base_url + "/_sim/fail", json={"status": 0, "delay": 3, "count": 1})  # slow, then fine
    started = time.monotonic()
    sock = socket.create_connection(gw.address)
    sock.sendall(request_bytes(json.dumps(BODY).encode()))
    wait_until(lambda: len(sim_stats(sim)["recent_headers"]) == 1, 2, "the request to reach upstream")
    assert upstream_connections(gw.proc, sim) == 1
    sock.close()
    wait_until(lambda: gw.stats().get("caller_left") == 1, 1, "the gateway to see the caller leave")
    wait_until(lambda: upstream_connections(gw.proc, sim) == 0, 1, "the upstream request to be cancelled")
    assert time.monotonic() - started < 2.5  # all before the upstream would have answered
    time.sleep(max(0.0, started + 3.5 - time.monotonic()))
    stats = gw.stats()
    assert stats["caller_left"] == 1 and not stats.get("submitted"), stats
    assert not gw.errors()


def test_a_caller_leaving_with_a_next_request_sent_is_seen_too(stack, sim_and_env, tmp_path):
    """A pipelined next request makes uvicorn stop reading the connection; the gateway reads on
    while it waits for the upstream, so a caller who leaves is still seen at once."""
    sim = sim_and_env()
    gw = start(stack, tmp_path)
    httpx2.post(sim.base_url + "/_sim/fail", json={"status": 0, "delay": 3, "count": 1})
    started = time.monotonic()
    sock = socket.create_connection(gw.address)
    sock.sendall(request_bytes(json.dumps(BODY).encode()) * 2)  # the second waits for the first
    wait_until(lambda: len(sim_stats(sim)["recent_headers"]) == 1, 2, "the request to reach upstream")
    sock.close()
    wait_until(lambda: gw.stats().get("caller_left") == 1, 1, "the gateway to see the caller leave")
    wait_until(lambda: upstream_connections(gw.proc, sim) == 0, 1, "the upstream request to be cancelled")
    assert time.monotonic() - started < 2.5
    assert len(sim_stats(sim)["recent_headers"]) == 1  # the second request never went upstream
    assert not gw.errors()


def test_the_deadline_cuts_slow_answers_and_long_streams(stack, sim_and_env, tmp_path):
    sim = sim_and_env(stream_event_ms=800)  # 6 events: 4.8 s
    gw = start(stack, tmp_path, TIERGUARD_GATEWAY_DEADLINE="1.5")
    httpx2.post(sim.base_url + "/_sim/fail", json={"status": 0, "delay": 6, "count": 1})
    started = time.monotonic()
    late = httpx2.post(gw.base + "/v1/messages", json=BODY, headers=HEADERS, timeout=10)
    took = time.monotonic() - started
    # Bounds with room for a busy host (parallel tests): uncut, these take 6 s and 4.8 s.
    assert late.status_code == 504 and 1.4 < took < 3.5, (late.status_code, took)
    assert late.json()["error"]["type"] == "api_error"
    assert "TIERGUARD_GATEWAY_DEADLINE" in late.json()["error"]["message"]
    started = time.monotonic()
    cut = httpx2.post(gw.base + "/v1/messages", json={**BODY, "stream": True}, headers=HEADERS, timeout=10)
    took = time.monotonic() - started
    assert cut.status_code == 200 and took < 3.5, took
    events = [block for block in cut.text.split("\n\n") if block]
    assert events[0].startswith("event: message_start") and "message_stop" not in cut.text
    assert events[-1].startswith("event: error\ndata: ")
    error = json.loads(events[-1].split("data: ", 1)[1])
    assert error["type"] == "error" and "TIERGUARD_GATEWAY_DEADLINE" in error["error"]["message"]
    wait_until(lambda: sim_stats(sim)["streams"].get("aborted") == 1, 5, "the upstream stream to be cut")
    # An answer within the deadline is untouched, and shadowed.
    assert httpx2.post(gw.base + "/v1/messages", json=BODY, headers=HEADERS).status_code == 200
    stats = gw.stats()
    assert stats["deadline_exceeded"] == 2 and stats.get("submitted") == 1, stats
    assert not gw.errors()


def stream_events(text_bytes: int, json_bytes: int) -> list[dict]:
    """A Messages API stream: a text block of ``text_bytes`` and a tool call of ``json_bytes``."""
    text = [{"type": "content_block_delta", "index": 0,
             "delta": {"type": "text_delta", "text": "abcdefghijklmnop"}}] * (text_bytes // 16)
    tool = [{"type": "content_block_delta", "index": 1,
             "delta": {"type": "input_json_delta", "partial_json": '"xxxxxxxxxxxxx",'}}] * (json_bytes // 16)
    return [{"type": "message_start", "message": {"model": ROUTED, "usage": {"input_tokens": 5}}},
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            *text,
            {"type": "content_block_start", "index": 1,
             "content_block": {"type": "tool_use", "name": "t", "input": {}}},
            {"type": "content_block_delta", "index": 1,
             "delta": {"type": "input_json_delta", "partial_json": '{"a": ['}},
            *tool,
            {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta",
                                                                  "partial_json": '"y"]}'}},
            {"type": "message_delta", "usage": {"output_tokens": 7}}, {"type": "message_stop"}]


def test_a_2mb_stream_assembles_in_linear_time():
    events = stream_events(2 << 20, 512 << 10)
    assembler = Assembler()
    started = time.process_time()
    done = [assembler.feed(event) for event in events]
    message = assembler.message()
    cpu = time.process_time() - started
    assert done.count(True) == 1 and done[-1]
    assert message["content"][0]["text"] == "abcdefghijklmnop" * (2 << 16)
    assert len(message["content"][1]["input"]["a"]) == (512 << 10) // 16 + 1
    assert message["usage"] == {"input_tokens": 5, "output_tokens": 7}
    assert cpu < 0.5, f"assembling 2 MB took {cpu:.2f} s of CPU"
    # The gateway's side: the same stream as server-sent events, in network-sized chunks.
    raw = b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)
    parser, assembler = SSEParser(), Assembler()
    started = time.process_time()
    for i in range(0, len(raw), 16384):
        for event in parser.feed(raw[i:i + 16384]):
            assembler.feed(event)
    cpu = time.process_time() - started
    assert assembler.message() == message
    assert cpu < 1.5, f"parsing and assembling {len(raw) >> 20} MB of events took {cpu:.2f} s of CPU"


def traffic(redis_url: str, metric: str) -> int:
    r = redis.Redis.from_url(redis_url)
    return sum(int(r.hget(key, f"sentiment|{ROUTED}|{metric}") or 0)
               for key in r.scan_iter("tierguard:traffic:*"))


def test_a_stream_over_the_assembly_cap_is_relayed_whole_and_not_shadowed(stack, sim_and_env, tmp_path,
                                                                           redis_url):
    sim = sim_and_env()
    gw = start(stack, tmp_path, TIERGUARD_STREAM_ASSEMBLY_MAX="300")
    body = {**BODY, "model": ROUTED, "stream": True}
    direct = httpx2.post(sim.base_url + "/v1/messages", json=body, headers=HEADERS)
    relayed = httpx2.post(gw.base + "/v1/messages", json=body, headers=HEADERS)
    assert len(relayed.content) > 300 and relayed.text.count("event: ") >= 6

    def same_ids(text: str) -> str:
        return re.sub(r'"msg_[0-9a-f]+"', '"msg_ID"', text)

    assert same_ids(relayed.text) == same_ids(direct.text)
    # Not shadowed; its tokens are still counted.
    wait_until(lambda: traffic(redis_url, "output_tokens") > 0, 10, "the stream's tokens counted")
    assert gw.stats()["stream_too_long"] == 1 and not gw.stats().get("submitted")
    # A call under the cap is shadowed as before.
    assert httpx2.post(gw.base + "/v1/messages", json=BODY, headers=HEADERS).status_code == 200
    wait_until(lambda: gw.stats().get("submitted") == 1, 5, "the call under the cap shadowed")
    assert not gw.errors()


def test_the_sdk_wrapper_does_not_shadow_a_stream_over_the_cap(simulator, redis_url, sqlite_url):
    server = simulator(**SCENARIO)
    client = tierguard.ShadowedAnthropic(
        anthropic.Anthropic(base_url=server.base_url, api_key=API_KEY),
        settings=get_settings(redis_url=redis_url, database_url=sqlite_url, stream_assembly_max=4),
        policy=parse_policy(POLICY))
    kwargs = {"category": "sentiment", "max_tokens": 8, "system": "sentiment: classify",
              "messages": [{"role": "user", "content": "ok"}]}
    stream = client.messages.create(stream=True, **kwargs)
    assert "".join(e.delta.text for e in stream if e.type == "content_block_delta") in LABELS
    with client.messages.stream(**kwargs) as managed:
        assert managed.get_final_message().content[0].text in LABELS
    assert client.tierguard_flush()
    stats = client.tierguard_stats()
    assert stats["stream_too_long"] == 2 and not stats.get("submitted"), stats
    client.tierguard_close()
