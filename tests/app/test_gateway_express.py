"""The gateway's express lane (app/express.py) against its ASGI path: the same calls through two
real ``tierguard gateway`` processes, one with ``TIERGUARD_GATEWAY_EXPRESS=false``, in front of one
scripted upstream (answers plain and chunked, a 429, a 400, a connection closed without an answer,
an answer past the deadline): the upstream receives the same bytes, the callers the same answers,
and the gateways count the same."""

import json
import socket
import socketserver
import threading
import time

import httpx2
import pytest
import redis

from tests.app.gatewayparts import BODY, HEADERS, LABELS, request_bytes, start, upstream_connections
from tests.helpers import wait_until
from tierguard.contract import keys

COMPARATOR = {"type": "label", "labels": LABELS}
POLICY = {"defaults": {"sample_rate": 0.0},
          "categories": {name: {"comparator": COMPARATOR} for name in ("on", "off", "half")}}
POLICY["categories"]["half"]["sample_rate"] = 0.5
ANSWER = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-haiku-4-5",
          "content": [{"type": "text", "text": "NEGATIVE"}], "stop_reason": "end_turn",
          "stop_sequence": None, "usage": {"input_tokens": 11, "output_tokens": 3}}
LIMITS = [("anthropic-ratelimit-requests-limit", "50"), ("anthropic-ratelimit-requests-remaining", "49"),
          ("anthropic-ratelimit-requests-reset", "2026-12-04T06:00:00Z"), ("request-id", "req_1")]


class Scripted(socketserver.ThreadingTCPServer):
    """An upstream on a loopback port whose answers follow ``script`` (one step per request:
    ``plain``, ``chunked``, ``429``, ``400``, ``close`` or ``slow``); ``seen``: each request's bytes."""

    daemon_threads = allow_reuse_address = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script: list[str] = []
        self.seen: list[bytes] = []
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        buffer = b""
        while True:
            while b"\r\n\r\n" not in buffer:
                data = self.request.recv(65536)
                if not data:
                    return
                buffer += data
            head, buffer = buffer.split(b"\r\n\r\n", 1)
            size = next((int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
                         if line.startswith(b"content-length:")), 0)
            while len(buffer) < size:
                buffer += self.request.recv(65536)
            body, buffer = buffer[:size], buffer[size:]
            self.server.seen.append(head + b"\r\n\r\n" + body)
            step = self.server.script.pop(0) if self.server.script else "plain"
            if step == "close":
                return
            self.request.sendall(_answer(step))


def _answer(step: str) -> bytes:
    status, body, more = 200, json.dumps(ANSWER).encode(), list(LIMITS)
    if step == "429":
        status, more = 429, [*more, ("retry-after", "7")]
        body = b'{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}'
    elif step == "400":
        status, body = 400, b'{"type":"error","error":{"type":"invalid_request_error","message":"no"}}'
    elif step == "slow":
        time.sleep(1.5)
    head = f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\nconnection: keep-alive\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in more)
    if step == "chunked":
        half = len(body) // 2
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (body[:half], body[half:]))
        return (head + "transfer-encoding: chunked\r\n\r\n").encode() + chunks + b"0\r\n\r\n"
    return (head + f"content-length: {len(body)}\r\n\r\n").encode() + body


STEPS = ["plain", "plain", "chunked", "429", "plain", "400", "close", "plain", "slow", "plain"]
FRAMING = {"content-length", "transfer-encoding"}  # each path frames the answer its own way


def _run(gw, upstream: Scripted, category: str) -> list[tuple]:
    """Every step of STEPS through ``gw`` (one kept-alive caller connection): what the caller got."""
    upstream.script, upstream.seen = list(STEPS), []
    got = []
    with httpx2.Client(timeout=10) as client:
        for _ in STEPS:
            r = client.post(gw.base + "/v1/messages", json=BODY,
                            headers={**HEADERS, "x-tierguard-category": category})
            headers = [(k, v) for k, v in r.headers.multi_items() if k not in FRAMING]
            got.append((r.status_code, headers, r.content))
    return got


def _traffic(redis_url: str, category: str) -> dict[str, int]:
    """The traffic counters the gateway flushed for ``category``: {metric: n}, models added up."""
    r = redis.Redis.from_url(redis_url)
    out: dict[str, int] = {}
    for key in r.scan_iter(keys.TRAFFIC.format(minute="*")):
        for field, n in r.hgetall(key).items():
            name, _, metric = field.decode().split("|")
            if name == category:
                out[metric] = out.get(metric, 0) + int(n)
    return out


@pytest.fixture
def scripted(stack, sqlite_url):
    upstream = Scripted()
    stack.configure(policy=POLICY, database_url=sqlite_url, base_url=upstream.base_url,
                    gateway_deadline=0.6)
    yield upstream
    upstream.shutdown()
    upstream.server_close()


def test_the_express_lane_sends_answers_and_counts_as_the_asgi_path(stack, scripted, redis_url, tmp_path):
    on, off = start(stack, tmp_path), start(stack, tmp_path, TIERGUARD_GATEWAY_EXPRESS="false")
    through_on = _run(on, scripted, "on")
    sent_on = scripted.seen
    through_off = _run(off, scripted, "off")
    assert [s for s, _, _ in through_on] == [200, 200, 200, 429, 200, 400, 502, 200, 504, 200]
    assert through_on == through_off
    assert sent_on == scripted.seen  # byte for byte (the category header is not sent upstream)
    assert b'"model":"claude-haiku-4-5"' in sent_on[0] and b"x-tierguard-category" not in sent_on[0]
    stats_on, stats_off = on.stats(), off.stats()
    # Express: every call but those on a new upstream connection (the first, after the close).
    assert stats_on.pop("express") == len(STEPS) - 3 and "express" not in stats_off
    assert stats_on == stats_off and stats_on["deadline_exceeded"] == 1, stats_on
    wait_until(lambda: _traffic(redis_url, "on").get("calls") == len(STEPS), 15, "the counts to be flushed")
    wait_until(lambda: _traffic(redis_url, "off").get("calls") == len(STEPS), 15, "the counts to be flushed")
    counted = _traffic(redis_url, "on")
    assert counted == _traffic(redis_url, "off")
    assert counted["input_tokens"] == 11 * 6 and counted["output_tokens"] == 3 * 6, counted  # the 200s
    paused = redis.Redis.from_url(redis_url).keys("*pause*")
    assert paused, "the 429 paused the shadows of its model"
    assert not on.errors() and not off.errors()


def test_a_call_drawn_for_sampling_by_the_lane_is_counted_and_drawn_once(stack, scripted, redis_url,
                                                                         tmp_path):
    gw = start(stack, tmp_path)
    with httpx2.Client(timeout=10) as client:
        for _ in range(60):
            r = client.post(gw.base + "/v1/messages", json=BODY,
                            headers={**HEADERS, "x-tierguard-category": "half"})
            assert r.status_code == 200
    stats = gw.stats()
    assert 0 < stats.get("submitted", 0) < 60 and stats["express"] + stats["submitted"] <= 60, stats
    # Counted once each: the ASGI path takes the lane's draw, it does not count and draw again.
    wait_until(lambda: _traffic(redis_url, "half").get("calls") == 60, 15, "the counts to be flushed")
    time.sleep(0.5)
    assert _traffic(redis_url, "half")["calls"] == 60


def test_a_caller_leaving_an_express_call_closes_its_upstream_connection(stack, scripted, tmp_path):
    gw = start(stack, tmp_path)
    named = {**HEADERS, "x-tierguard-category": "on"}
    with httpx2.Client(timeout=10) as client:  # the pool's first connection (the ASGI path's)
        assert client.post(gw.base + "/v1/messages", json=BODY, headers=named).status_code == 200
    scripted.script = ["slow"]
    sock = socket.create_connection(gw.address)
    sock.sendall(request_bytes(json.dumps(BODY).encode(), named))
    wait_until(lambda: len(scripted.seen) == 2, 2, "the request to reach upstream")
    assert gw.stats()["express"] == 1
    sock.close()
    wait_until(lambda: gw.stats().get("caller_left") == 1, 1, "the gateway to see the caller leave")
    wait_until(lambda: upstream_connections(gw.proc, scripted) == 0, 1, "the upstream connection to close")
    assert not gw.errors()
