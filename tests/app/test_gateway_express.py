"""The gateway's express lane (app/express.py) against its ASGI path: the same calls through two
real ``tierguard gateway`` processes, one with ``TIERGUARD_GATEWAY_EXPRESS=false``, in front of one
scripted upstream (answers plain and chunked, a 429, a 400, a connection closed without an answer,
an answer past the deadline): the upstream receives the same bytes, the callers the same answers,
and the gateways count the same."""

import http.client
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
from tierguard.app.lean_client import HIGH_WATER
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
    ``plain``, ``chunked``, ``429``, ``400``, ``close``, ``slow``, ``cut429``: a 429 closed mid-body,
    ``999``: a status past uvicorn's 599, ``099``: three digits below any status, ``big``: a body
    just over the lean client's HIGH_WATER);
    ``seen``: each request's bytes."""

    daemon_threads = allow_reuse_address = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script: list[str] = []
        self.seen: list[bytes] = []
        self.sent = 0  # bytes of stream events sent
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
            if step.startswith("stream"):
                self._stream(step)
                continue
            self.request.sendall(_answer(step))
            if step == "cut429":
                return

    def _stream(self, step: str) -> None:
        """An SSE answer, chunked, an event a chunk (``stream-slow``: past the deadline after the first)."""
        self.request.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                             b"transfer-encoding: chunked\r\nrequest-id: req_2\r\n\r\n")
        big = _sse(BIG) * 64  # 64 events a write
        events = EVENTS[:2] + [big] * (BIG_COUNT // 64) + EVENTS[2:] if step == "stream-big" else EVENTS
        for i, event in enumerate(events):
            if step == "stream-slow" and i == 1:
                time.sleep(1.5)
            data = event if isinstance(event, bytes) else _sse(event)
            try:
                self.request.sendall(b"%x\r\n%s\r\n" % (len(data), data))
            except OSError:
                return
            self.server.sent += len(data)
        self.request.sendall(b"0\r\n\r\n")


def _sse(event: dict) -> bytes:
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()


def _answer(step: str) -> bytes:
    status, body, more = 200, json.dumps(ANSWER).encode(), list(LIMITS)
    if step in ("429", "cut429"):
        status, more = 429, [*more, ("retry-after", "7")]
        body = b'{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}'
    elif step == "400":
        status, body = 400, b'{"type":"error","error":{"type":"invalid_request_error","message":"no"}}'
    elif step == "big":
        body = b" " * (HIGH_WATER + 1)  # past it only with its last byte: paused as it ends
    elif step == "999":
        status = 999
    elif step == "099":  # three digits, yet no HTTP status
        status = 99
    elif step == "slow":
        time.sleep(1.5)
    head = f"HTTP/1.1 {status:03d} X\r\ncontent-type: application/json\r\nconnection: keep-alive\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in more)
    if step == "chunked":
        half = len(body) // 2
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (body[:half], body[half:]))
        return (head + "transfer-encoding: chunked\r\n\r\n").encode() + chunks + b"0\r\n\r\n"
    if step == "cut429":  # its head and a part of its body, then the connection closes
        return (head + f"content-length: {len(body)}\r\n\r\n").encode() + body[:10]
    return (head + f"content-length: {len(body)}\r\n\r\n").encode() + body


EVENTS = [{"type": "message_start", "message": {**ANSWER, "content": [], "stop_reason": None,
                                                "usage": {"input_tokens": 11, "output_tokens": 1}}},
          {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
          {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "NEGATIVE"}},
          {"type": "content_block_stop", "index": 0},
          {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
           "usage": {"output_tokens": 3}},
          {"type": "message_stop"}]
BIG = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "x" * 1000}}
BIG_COUNT = 32 * 1024  # a 32 MB stream
STEPS = ["plain", "plain", "chunked", "429", "plain", "400", "close", "plain", "slow", "plain", "stream",
         "stream-slow", "plain"]
FRAMING = {"content-length", "transfer-encoding"}  # each path frames the answer its own way


def _run(gw, upstream: Scripted, category: str, whole: bool = False) -> list[tuple]:
    """Every step of STEPS through ``gw`` (one kept-alive caller connection): what the caller got.
    ``whole``: each request written in one piece (``http.client``), else head and body apart
    (``httpx2``)."""
    upstream.script, upstream.seen = list(STEPS), []
    got = []
    send = _WholeSender(gw) if whole else _HttpxSender(gw)
    with send:
        for step in STEPS:
            body = {**BODY, "stream": True} if step.startswith("stream") else BODY
            got.append(send.post(body, {**HEADERS, "x-tierguard-category": category}))
    return got


class _HttpxSender:
    def __init__(self, gw):
        self.base, self.client = gw.base, httpx2.Client(timeout=10)

    def post(self, body: dict, headers: dict) -> tuple:
        r = self.client.post(self.base + "/v1/messages", json=body, headers=headers)
        return r.status_code, [(k, v) for k, v in r.headers.multi_items() if k not in FRAMING], r.content

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.client.close()


class _OneWrite(http.client.HTTPConnection):
    """``http.client``'s connection writing a request's head and body in one ``send``."""

    def _send_output(self, message_body=None, encode_chunked=False) -> None:
        self._buffer.extend((b"", b""))
        head = b"\r\n".join(self._buffer)
        del self._buffer[:]
        self.send(head + (message_body or b""))


class _WholeSender(_HttpxSender):
    def __init__(self, gw):
        self.conn = _OneWrite(*gw.address, timeout=10)

    def post(self, body: dict, headers: dict) -> tuple:
        data = json.dumps(body, separators=(",", ":")).encode()  # (as httpx2 writes it)
        self.conn.request("POST", "/v1/messages", body=data, headers=headers)
        r = self.conn.getresponse()
        content = r.read()
        return r.status, [(k.lower(), v) for k, v in r.getheaders() if k.lower() not in FRAMING], content

    def __exit__(self, *exc) -> None:
        self.conn.close()


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


@pytest.mark.parametrize("whole", [False, True], ids=["head-and-body-apart", "whole"])
def test_the_express_lane_sends_answers_and_counts_as_the_asgi_path(stack, scripted, redis_url, tmp_path,
                                                                    whole):
    """Both ways a request arrives: its head and body apart (the parser's callbacks take it), or
    whole in one write (read past the parser, app/wholes)."""
    on, off = start(stack, tmp_path), start(stack, tmp_path, TIERGUARD_GATEWAY_EXPRESS="false")
    through_on = _run(on, scripted, "on", whole)
    sent_on = scripted.seen
    through_off = _run(off, scripted, "off", whole)
    assert [s for s, _, _ in through_on] == [200, 200, 200, 429, 200, 400, 502, 200, 504, 200, 200, 200, 200]
    assert through_on == through_off
    assert b"message_stop" in through_on[10][2] and b"event: error" in through_on[11][2]
    assert sent_on == scripted.seen  # byte for byte (the category header is not sent upstream)
    assert b'"model":"claude-haiku-4-5"' in sent_on[0] and b"x-tierguard-category" not in sent_on[0]
    stats_on, stats_off = on.stats(), off.stats()
    # Express: every call but those on a new upstream connection (the first, after each close).
    assert stats_on.pop("express") == len(STEPS) - 4 and "express" not in stats_off
    read_whole = stats_on.pop("express_whole", 0)  # (apart: both may have arrived by the first read)
    assert read_whole == len(STEPS) - 4 if whole else read_whole <= len(STEPS) - 4, read_whole
    assert stats_on == stats_off and stats_on["deadline_exceeded"] == 2, stats_on
    wait_until(lambda: _traffic(redis_url, "on").get("calls") == len(STEPS), 15, "the counts to be flushed")
    wait_until(lambda: _traffic(redis_url, "off").get("calls") == len(STEPS), 15, "the counts to be flushed")
    counted = _traffic(redis_url, "on")
    assert counted == _traffic(redis_url, "off")
    # Every whole 200 (the cut stream has no usage to count: it never ended)
    assert counted["input_tokens"] == 11 * 8 and counted["output_tokens"] == 3 * 8, counted
    paused = redis.Redis.from_url(redis_url).keys("*pause*")
    assert paused, "the 429 paused the shadows of its model"
    assert not on.errors() and not off.errors()


@pytest.mark.parametrize("whole", [False, True], ids=["head-and-body-apart", "whole"])
def test_a_call_drawn_for_sampling_by_the_lane_is_counted_and_drawn_once(stack, scripted, redis_url,
                                                                         tmp_path, whole):
    gw = start(stack, tmp_path)
    with _WholeSender(gw) if whole else _HttpxSender(gw) as send:
        for _ in range(60):
            assert send.post(BODY, {**HEADERS, "x-tierguard-category": "half"})[0] == 200
    stats = gw.stats()
    assert 0 < stats.get("submitted", 0) < 60 and stats["express"] + stats["submitted"] <= 60, stats
    if whole:  # (apart: head and body may still arrive in one read, then read whole too)
        assert stats.get("express_whole", 0) == stats["express"], stats
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


def test_an_express_stream_to_a_caller_not_reading_pauses_the_upstream(stack, scripted, tmp_path):
    """The caller reads nothing for a while: the gateway stops reading the upstream (its memory does
    not take the stream in), then relays the rest once the caller reads."""
    import psutil

    gw = start(stack, tmp_path, TIERGUARD_GATEWAY_DEADLINE="60")
    named = {**HEADERS, "x-tierguard-category": "on"}
    with httpx2.Client(timeout=10) as client:  # the pool's first connection (the ASGI path's)
        assert client.post(gw.base + "/v1/messages", json=BODY, headers=named).status_code == 200
    scripted.script, scripted.sent = ["stream-big"], 0
    process = psutil.Process(gw.proc.pid)
    before = process.memory_info().rss
    sock = socket.create_connection(gw.address)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.sendall(request_bytes(json.dumps({**BODY, "stream": True}).encode(), named))
    wait_until(lambda: scripted.sent > 1_000_000, 5, "the stream to start")
    time.sleep(2)
    held = scripted.sent
    assert held < 24 * 1024 * 1024, held  # the upstream waits (socket buffers hold the rest)
    assert process.memory_info().rss - before < 16 * 1024 * 1024
    received = b""
    sock.settimeout(10)
    while not received.endswith(b"0\r\n\r\n"):
        data = sock.recv(1 << 20)
        assert data, received[-300:]
        received += data
    assert b"message_stop" in received and len(received) > 32 * 1024 * 1024
    assert gw.stats()["express"] == 1
    sock.close()
    assert not gw.errors()
