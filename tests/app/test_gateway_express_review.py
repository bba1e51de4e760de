"""The express lane (app/express.py) where its path and the ASGI path part: calls pipelined behind an
express call, a call after the pool's kept-alive connections expired, an answer the upstream breaks
off, a status past 599 — each through a real ``tierguard gateway`` in front of the
scripted upstream — and a kept-alive connection left paused by a slow reader (the lean pool alone)."""

import asyncio
import json
import socket
import time
from typing import Any

import httptools
import httpx2
import pytest
import redis

from tests.app import test_gateway_express as express
from tests.app.gatewayparts import BODY, HEADERS, request_bytes, start
from tests.helpers import wait_until
from tierguard.app import lean_client

scripted = express.scripted  # the scripted upstream, as a fixture here too
NAMED = {**HEADERS, "x-tierguard-category": "on"}


def _warm(gw) -> None:
    """One call through ``gw``: the ASGI path's, which leaves a kept-alive upstream connection."""
    with httpx2.Client(timeout=10) as client:
        assert client.post(gw.base + "/v1/messages", json=BODY, headers=NAMED).status_code == 200


def _answers(sock: socket.socket, n: int, wait: float = 3.0) -> list[tuple[int, bytes]]:
    """The answers (status, body) read from ``sock`` until ``n`` are in, it closes, or ``wait`` passes."""
    got: list[tuple[int, bytes]] = []
    body: list[bytes] = []

    class Reader:
        def on_body(self, chunk: bytes) -> None:
            body.append(chunk)

        def on_message_complete(self) -> None:
            got.append((parser.get_status_code(), b"".join(body)))
            body.clear()

    parser = httptools.HttpResponseParser(Reader())
    until = time.monotonic() + wait
    while len(got) < n and (left := until - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            break
        if not data:
            break
        parser.feed_data(data)
    return got


def test_calls_pipelined_behind_an_express_call_are_answered_in_order(stack, scripted, tmp_path):
    gw = start(stack, tmp_path)
    _warm(gw)
    scripted.script = ["plain", "400"]
    one = request_bytes(json.dumps(BODY).encode(), NAMED)
    with socket.create_connection(gw.address) as sock:
        sock.sendall(one + one + one)  # the first taken by the lane, the others wait behind it
        got = _answers(sock, 3)
    assert [status for status, _ in got] == [200, 400, 200]
    assert json.loads(got[0][1])["model"] == "claude-haiku-4-5"
    stats = gw.stats()
    assert stats["express"] >= 1 and not stats.get("caller_left") and not gw.errors(), stats


def test_a_whole_request_written_while_an_express_call_is_in_flight_waits_behind_it(stack, scripted,
                                                                                    tmp_path):
    """A second request, written whole while the first (read whole) is still upstream, is not read
    past the parser: it waits behind the first and is answered after it (then by the ASGI path)."""
    gw = start(stack, tmp_path)
    _warm(gw)
    scripted.script = ["slow", "400"]
    one = request_bytes(json.dumps(BODY).encode(), NAMED)
    with socket.create_connection(gw.address) as sock:
        sock.sendall(one)
        wait_until(lambda: len(scripted.seen) == 2, 3, "the first request to reach upstream")
        sock.sendall(one)
        got = _answers(sock, 2, wait=6.0)
    assert [status for status, _ in got] == [504, 400]  # (the first past the fixture's 0.6 s deadline)
    stats = gw.stats()
    assert stats["express"] == stats["express_whole"] == 1 and not gw.errors(), stats


def test_a_body_that_looks_like_a_request_is_read_as_the_body_it_is(stack, scripted, tmp_path):
    """A head, then, in a later write, a body that is byte for byte a whole express request: one
    request, that body sent upstream as its body (not JSON: the ASGI path relays it for the API to
    refuse), never a second request read past the parser."""
    gw = start(stack, tmp_path)
    _warm(gw)
    inner = request_bytes(json.dumps(BODY).encode(), NAMED)
    with socket.create_connection(gw.address) as sock:
        sock.sendall(request_bytes(b"", NAMED, length=len(inner)))
        time.sleep(0.2)
        sock.sendall(inner)
        got = _answers(sock, 2, wait=2.0)
    assert [status for status, _ in got] == [200], got
    assert len(scripted.seen) == 2 and scripted.seen[1].endswith(b"\r\n\r\n" + inner), scripted.seen
    stats = gw.stats()
    assert not stats.get("express_whole") and not gw.errors(), stats


def test_a_whole_request_after_a_partial_head_is_the_parsers(stack, scripted, tmp_path):
    """Half a head, then a write that would be a whole express request on its own: the parser is
    within a request, so it reads those bytes as that head's lines (and answers 400)."""
    gw = start(stack, tmp_path)
    _warm(gw)
    with socket.create_connection(gw.address) as sock:
        sock.sendall(b"POST /v1/messages HTTP/1.1\r\nhost: gateway\r\n")
        time.sleep(0.2)
        sock.sendall(request_bytes(json.dumps(BODY).encode(), NAMED))
        got = _answers(sock, 2, wait=2.0)
    assert [status for status, _ in got] == [400], got
    assert len(scripted.seen) == 1 and not gw.stats().get("express_whole")


def test_a_content_length_past_int_s_digits_is_served_by_the_asgi_path(stack, scripted, tmp_path):
    """``content-length: 000…0N`` (5,000 zeros: more digits than ``int()`` reads): neither read whole
    nor raised on in the lane's head check (it was: a 400), but the ASGI path's call."""
    gw = start(stack, tmp_path)
    _warm(gw)
    body = json.dumps(BODY).encode()
    data = request_bytes(body, NAMED).replace(b"content-length: ", b"content-length: " + b"0" * 5000)
    with socket.create_connection(gw.address) as sock:
        sock.sendall(data)
        got = _answers(sock, 1)
    assert [status for status, _ in got] == [200], got
    assert len(scripted.seen) == 2 and not gw.stats().get("express")
    assert not gw.errors()


@pytest.mark.parametrize("whole", [False, True], ids=["head-and-body-apart", "whole"])
def test_a_call_after_the_kept_alive_connections_expired_is_counted_once(stack, scripted, redis_url,
                                                                         tmp_path, whole):
    """``whole``: the second call written in one piece (read past the parser, the lane's draw then
    carried to the ASGI path)."""
    gw = start(stack, tmp_path)
    _warm(gw)
    time.sleep(lean_client.KEEPALIVE_S + 0.5)  # the pool's idle connection is too old to be taken
    if whole:
        with socket.create_connection(gw.address) as sock:
            sock.sendall(request_bytes(json.dumps(BODY).encode(), NAMED))
            assert [status for status, _ in _answers(sock, 1)] == [200]
    else:
        _warm(gw)  # the lane drew it, found no connection to take: the ASGI path sends it
    wait_until(lambda: express._traffic(redis_url, "on").get("calls", 0) >= 2, 15, "the counts to be flushed")
    time.sleep(1.0)
    assert express._traffic(redis_url, "on")["calls"] == 2
    assert not gw.errors()


def test_a_429_broken_off_mid_body_pauses_the_shadows_as_on_the_asgi_path(stack, scripted, redis_url,
                                                                          tmp_path):
    gw = start(stack, tmp_path)
    _warm(gw)
    scripted.script = ["cut429"]
    with httpx2.Client(timeout=10) as client:
        try:
            client.post(gw.base + "/v1/messages", json=BODY, headers=NAMED)
        except httpx2.TransportError:
            pass  # the ASGI path relays the head, then cuts the connection
    assert gw.stats()["express"] == 1
    paused = redis.Redis.from_url(redis_url)
    wait_until(lambda: paused.keys("*pause*"), 5, "the 429 to pause the shadows of its model")


def test_an_answer_with_a_status_past_599_is_written_as_sent(stack, scripted, tmp_path):
    gw = start(stack, tmp_path)  # (uvicorn's status lines stop at 599: writing it raised KeyError)
    _warm(gw)
    scripted.script = ["999"]
    with httpx2.Client(timeout=5) as client:
        r = client.post(gw.base + "/v1/messages", json=BODY, headers=NAMED)
        assert r.status_code == 999 and r.json()["model"] == "claude-haiku-4-5"
        assert client.post(gw.base + "/v1/messages", json=BODY, headers=NAMED).status_code == 200
    assert gw.stats()["express"] == 2 and not gw.errors()


def test_the_asgi_path_writes_a_status_past_599_as_sent_too(stack, scripted, tmp_path):
    gw = start(stack, tmp_path, TIERGUARD_GATEWAY_EXPRESS="false")  # (it raised KeyError: an error
    scripted.script = ["plain", "999"]  # logged, the connection closed, no answer)
    with httpx2.Client(timeout=5) as client:
        assert client.post(gw.base + "/v1/messages", json=BODY, headers=NAMED).status_code == 200
        r = client.post(gw.base + "/v1/messages", json=BODY, headers=NAMED)
        assert r.status_code == 999 and r.json()["model"] == "claude-haiku-4-5"
        assert client.post(gw.base + "/v1/messages", json=BODY, headers=NAMED).status_code == 200
    assert gw.stats().get("express", 0) == 0 and not gw.errors()


@pytest.mark.parametrize("lane", ["true", "false"])
def test_a_status_below_100_is_the_gateways_502_on_either_path(stack, scripted, tmp_path, lane):
    gw = start(stack, tmp_path, TIERGUARD_GATEWAY_EXPRESS=lane)  # (the ASGI path raised KeyError, the
    scripted.script = ["plain", "099"]  # lane wrote "HTTP/1.1 99", a status line no client reads)
    with httpx2.Client(timeout=5) as client:
        assert client.post(gw.base + "/v1/messages", json=BODY, headers=NAMED).status_code == 200
        r = client.post(gw.base + "/v1/messages", json=BODY, headers=NAMED)
        assert r.status_code == 502 and "RemoteProtocolError" in r.text  # (as for any malformed head)
        assert client.post(gw.base + "/v1/messages", json=BODY, headers=NAMED).status_code == 200
    assert not gw.errors()


def test_a_connection_paused_for_a_slow_reader_is_read_again_once_kept_alive():
    upstream = express.Scripted()
    upstream.script = ["big", "plain"]

    async def run() -> int:
        pool = lean_client.Pool(upstream.base_url, 16, 2.0, None)
        response = await pool.send("POST", "/v1/messages", [], b"{}")
        while not response.complete:  # nobody reads it: the socket is paused past HIGH_WATER
            await asyncio.sleep(0.01)
        assert response.paused
        await response.aclose()  # all of it in: the connection is kept, and taken next (the lane's way)
        conn = pool.take_idle()
        assert conn is not None
        conn.response = again = lean_client.Response(conn, 2.0)
        conn.transport.write(pool.request_head("POST", "/v1/messages", [], 2) + b"{}")
        await again.head_arrived()
        again.close()
        return again.status_code

    try:
        assert asyncio.run(run()) == 200
    finally:
        upstream.shutdown()
        upstream.server_close()


def test_a_kept_connection_the_upstream_ended_is_not_taken_before_it_is_lost():
    upstream = express.Scripted()

    async def run() -> tuple[Any, int]:
        pool = lean_client.Pool(upstream.base_url, 16, 2.0, None)
        response = await pool.send("POST", "/v1/messages", [], b"{}")
        assert [chunk async for chunk in response.aiter_raw()]
        await response.aclose()
        (conn,) = pool.idle
        conn.transport.close()  # as the loop closes one the upstream ended: lost only on its next turn
        taken = pool.take_idle()  # (the lane takes from the parser's callbacks, without awaiting)
        await asyncio.sleep(0.05)
        return taken, pool.slots.free

    try:
        taken, free = asyncio.run(run())
        assert taken is None and free == 16  # a request written on it would be lost: a 502
    finally:
        upstream.shutdown()
        upstream.server_close()
