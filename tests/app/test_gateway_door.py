"""A bounded gateway (issue 25), at its door: callers slow to send their request head or body,
more callers than a process holds, a flood of them past the open-file limit.

Each test drives a real ``tierguard gateway`` process (uvicorn with the guarded protocol) in
front of the real simulator, and failed on the gateway before it.
"""

import json
import re
import socket
import threading
import time

import httpx2

from tests.app.gatewayparts import (
    BODY,
    HEADERS,
    ROUTED,
    closed_at,
    request_bytes,
    seen,
    start,
)


def test_slow_request_heads_are_cut_off_and_other_callers_still_served(stack, sim_and_env, tmp_path):
    sim_and_env()
    gw = start(stack, tmp_path, TIERGUARD_GATEWAY_HEADER_TIMEOUT="3")
    opened = time.monotonic()
    slow = [socket.create_connection(gw.address) for _ in range(50)]
    head = b"POST /v1/messages HTTP/1.1\r\nhost: gateway\r\nx-pad: " + b"a" * 1000
    stop = threading.Event()

    def dribble() -> None:  # one byte a tenth of a second on every slow socket
        for i in range(len(head)):
            if stop.wait(0.1):
                return
            for sock in slow:
                try:
                    sock.send(head[i:i + 1])
                except OSError:
                    pass

    dribbler = threading.Thread(target=dribble)
    dribbler.start()
    try:
        time.sleep(0.3)
        started = time.monotonic()
        answer = httpx2.post(gw.base + "/v1/messages", json=BODY, headers=HEADERS, timeout=10)
        took = time.monotonic() - started
        assert answer.status_code == 200 and answer.json()["model"] == ROUTED
        # Held behind the slow heads, it would wait for their 3 s timeout (room for a busy host).
        assert took < 2.0, f"a request took {took:.2f} s beside 50 slow callers"
        closed = [closed_at(sock, opened + 6) for sock in slow]
    finally:
        stop.set()
        dribbler.join()
        for sock in slow:
            sock.close()
    assert None not in closed, f"{closed.count(None)} of 50 slow callers still connected after 6 s"
    assert min(closed) - opened > 2.9, "a slow caller was cut before its timeout"
    assert max(closed) - opened < 5.0
    assert gw.stats()["header_timeout"] == 50
    assert len(re.findall("TIERGUARD_GATEWAY_HEADER_TIMEOUT", gw.log.read_text())) == 1  # logged once


def test_the_gateway_raises_its_open_file_limit(stack, sim_and_env, tmp_path):
    sim_and_env()
    gw = start(stack, tmp_path, nofile=64)
    idle = [socket.create_connection(gw.address) for _ in range(120)]  # more than 64 files
    try:
        answer = httpx2.post(gw.base + "/v1/messages", json=BODY, headers=HEADERS, timeout=5)
        assert answer.status_code == 200
    finally:
        for sock in idle:
            sock.close()
    limits = open(f"/proc/{gw.proc.pid}/limits").read()
    soft, hard = re.search(r"Max open files\s+(\d+)\s+(\d+)", limits).groups()
    assert soft == hard


class Flood:
    """``n`` sockets sending a request head one byte every ``every`` seconds, each opened again
    as soon as the gateway closes it (a slowloris)."""

    HEAD = b"POST /v1/messages HTTP/1.1\r\nhost: gateway\r\nx-pad: " + b"a" * 100_000

    def __init__(self, address: tuple[str, int], n: int, every: float):
        self.address, self.n, self.every = address, n, every
        self.stop = threading.Event()
        self.reopened = 0
        self.thread = threading.Thread(target=self.run)

    def run(self) -> None:
        socks: list[socket.socket | None] = [None] * self.n
        sent = [0] * self.n
        while not self.stop.wait(self.every):
            for i in range(self.n):
                try:
                    if socks[i] is None:
                        socks[i] = socket.create_connection(self.address, timeout=0.2)
                        socks[i].setblocking(False)
                        sent[i] = 0
                        self.reopened += 1
                    socks[i].send(self.HEAD[sent[i]:sent[i] + 1])
                    sent[i] += 1
                except OSError:
                    if socks[i] is not None:
                        socks[i].close()
                    socks[i] = None
        for sock in socks:
            if sock is not None:
                sock.close()

    def __enter__(self) -> "Flood":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def test_a_flood_of_slow_callers_past_the_open_file_limit_never_locks_others_out(stack, sim_and_env,
                                                                                   tmp_path):
    """The review's 1,000 slow sockets against 1,024 files, at a quarter of the scale."""
    sim_and_env()
    gw = start(stack, tmp_path, nofile=(256, 256), TIERGUARD_GATEWAY_MAX_CLIENTS="128")
    answers = []
    with Flood(gw.address, 300, 0.25):
        time.sleep(2)
        for _ in range(10):
            started = time.monotonic()
            try:
                answer = httpx2.post(gw.base + "/v1/messages", json=BODY, headers=HEADERS, timeout=5)
                status = answer.status_code
            except httpx2.TransportError as err:
                status = type(err).__name__
            answers.append((status, round(time.monotonic() - started, 2)))
            time.sleep(0.2)
    assert [status for status, _ in answers] == [200] * 10, answers
    assert max(took for _, took in answers) < 2.0, answers
    stats = gw.stats()
    assert stats["evicted_idle"] > 0
    assert "open-file limit (256) is below" in gw.log.read_text()  # told at startup


def test_beyond_max_clients_a_caller_takes_an_idle_place_or_gets_a_quick_503(stack, sim_and_env, tmp_path):
    sim_and_env()
    gw = start(stack, tmp_path, TIERGUARD_GATEWAY_MAX_CLIENTS="10", TIERGUARD_GATEWAY_HEADER_TIMEOUT="30")
    busy = [socket.create_connection(gw.address) for _ in range(10)]
    for sock in busy:  # requests in progress (their bodies still to come): no place to give
        sock.sendall(request_bytes(b"", length=100))
    time.sleep(0.3)
    started = time.monotonic()
    refused = httpx2.post(gw.base + "/v1/messages", json=BODY, headers=HEADERS, timeout=10)
    took = time.monotonic() - started
    for sock in busy:
        sock.close()
    assert refused.status_code == 503 and took < 1.0, (refused.status_code, took)
    error = refused.json()
    assert error["type"] == "error" and error["error"]["type"] == "overloaded_error"
    assert "TIERGUARD_GATEWAY_MAX_CLIENTS" in error["error"]["message"]
    time.sleep(0.3)
    idle = [socket.create_connection(gw.address) for _ in range(10)]  # connected, nothing sent
    try:
        time.sleep(0.3)
        started = time.monotonic()
        admitted = httpx2.post(gw.base + "/v1/messages", json=BODY, headers=HEADERS, timeout=10)
        took = time.monotonic() - started
        assert admitted.status_code == 200 and took < 1.0, (admitted.status_code, took)
        # The one that had waited longest gave its place; the others are still connected.
        assert closed_at(idle[0], time.monotonic() + 1) is not None
        assert [closed_at(sock, time.monotonic() + 0.05) for sock in idle[1:]] == [None] * 9
    finally:
        for sock in idle:
            sock.close()
    stats = gw.stats()
    assert stats["too_many_clients"] == 1 and stats["evicted_idle"] == 1
    assert stats["caller_left"] == 10  # the requests left unfinished


def test_a_caller_whose_request_is_in_takes_a_place_from_one_that_only_just_connected(
        stack, sim_and_env, tmp_path):
    """Every place held by connections made an instant ago (none has waited 0.1 s for its head): a
    caller whose whole request is in takes the place of the one that has waited longest, instead of
    a 503 — slow callers reconnecting as fast as they are closed (the flood above) lock no one out."""
    sim_and_env()
    gw = start(stack, tmp_path, TIERGUARD_GATEWAY_MAX_CLIENTS="10")
    idle = [socket.create_connection(gw.address) for _ in range(10)]  # no head yet
    caller = socket.create_connection(gw.address)
    try:
        caller.sendall(request_bytes(json.dumps(BODY).encode()))
        caller.settimeout(10)
        answer = b""
        while b"\r\n" not in answer:
            answer += caller.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        assert closed_at(idle[0], time.monotonic() + 1) is not None  # the first to connect gave way
    finally:
        for sock in (*idle, caller):
            sock.close()
    stats = gw.stats()
    assert stats["evicted_idle"] == 1 and "too_many_clients" not in stats, stats


def test_a_body_sent_too_slowly_is_a_408_and_nothing_goes_upstream(stack, sim_and_env, tmp_path):
    sim = sim_and_env()
    gw = start(stack, tmp_path, TIERGUARD_GATEWAY_BODY_TIMEOUT="1")
    body = json.dumps(BODY).encode() + b" " * 1000
    sock = socket.create_connection(gw.address)
    started = time.monotonic()
    sock.sendall(request_bytes(body[:100], length=len(body)))  # and never the rest
    sock.settimeout(5)
    answer = b""
    while chunk := sock.recv(65536):  # the answer, then the connection closed
        answer += chunk
    took = time.monotonic() - started
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408 ") and 0.9 < took < 2.5, (answer[:40], took)
    error = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert error["type"] == "error" and error["error"]["type"] == "timeout_error"
    assert "TIERGUARD_GATEWAY_BODY_TIMEOUT" in error["error"]["message"]
    assert seen(sim) == []
    assert gw.stats()["body_timeout"] == 1 and not gw.errors()
