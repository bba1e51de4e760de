"""A bounded gateway (issue 25): slow callers, too many callers, deep JSON, broken bodies, callers
that leave, answers that take too long, streams too long to assemble.

Each test drives a real ``tierguard gateway`` process (uvicorn, the guarded protocol) in front
of the real simulator, or the real stream assembler, and failed on the gateway before it.
"""

import gzip
import http.client
import json
import os
import re
import resource
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import anthropic
import httpx2
import psutil
import pytest
import redis

import tierguard
from tests.helpers import API_KEY, wait_until
from tierguard.app.stream import Assembler, SSEParser
from tierguard.config import get_settings
from tierguard.policy import parse_policy
from tierguard.sim.servers import free_port

LABELS = ["POSITIVE", "NEGATIVE"]
SCENARIO = {"categories": {"sentiment": {"kind": "label", "labels": LABELS, "agreement": 1.0}}}
POLICY = {"defaults": {"sample_rate": 1.0},
          "categories": {"sentiment": {"comparator": {"type": "label", "labels": LABELS}}}}
HEADERS = {"x-api-key": API_KEY, "anthropic-version": "2023-06-01",
           "content-type": "application/json", "x-tierguard-category": "sentiment"}
BODY = {"model": "claude-opus-4-7", "max_tokens": 8, "system": "sentiment: classify",
        "messages": [{"role": "user", "content": "The parcel arrived damaged."}]}
ROUTED = "claude-haiku-4-5"


@dataclass
class Running:
    base: str
    proc: subprocess.Popen
    log: object

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.base.removeprefix("http://").split(":")
        return host, int(port)

    def stats(self) -> dict:
        return httpx2.get(self.base + "/tierguard/stats").json()

    def errors(self) -> list[str]:
        """Lines of the gateway's log at ERROR, or with a traceback."""
        return [line for line in self.log.read_text().splitlines()
                if " ERROR " in line or line.startswith("Traceback")]


def start(stack, tmp_path, nofile: int | tuple[int, int] | None = None, **env: str) -> Running:
    """A ``tierguard gateway`` process, as tests/conftest.py starts one; ``nofile``: its soft
    open-file limit at start (the hard one unchanged), or both."""
    port = free_port()
    log = tmp_path / f"gateway-{port}.log"

    def limit() -> None:
        if nofile is not None:
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            soft_hard = nofile if isinstance(nofile, tuple) else (nofile, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, soft_hard)

    proc = subprocess.Popen([sys.executable, "-m", "tierguard", "gateway", "--port", str(port)],
                            env={**os.environ, **stack.env, **env}, stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True,
                            preexec_fn=limit)
    stack.others.append(proc)
    running = Running(f"http://127.0.0.1:{port}", proc, log)

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"gateway exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            return httpx2.get(running.base + "/readyz", timeout=1).status_code == 200
        except httpx2.TransportError:
            return False

    wait_until(ready, 30, "the gateway to be ready")
    return running


def sim_stats(sim) -> dict:
    return httpx2.get(sim.base_url + "/_sim/stats").json()


def seen(sim) -> list[bytes]:
    """The bodies of the /v1/messages requests the simulator received."""
    return [r["body"].encode() for r in httpx2.get(sim.base_url + "/_sim/requests").json()["requests"]]


def request_bytes(body: bytes, headers: dict = HEADERS, length: int | None = None) -> bytes:
    head = f"POST /v1/messages HTTP/1.1\r\nhost: gateway\r\ncontent-length: {length or len(body)}\r\n"
    return (head + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode() + body


def closed_at(sock: socket.socket, until: float) -> float | None:
    """When the peer closed ``sock`` (monotonic), or None if it is still open at ``until``."""
    while (left := until - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return time.monotonic()
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic()
        except TimeoutError:
            return None
    return None


def upstream_connections(proc: subprocess.Popen, sim) -> int:
    """The gateway's open connections to the simulator."""
    port = int(sim.base_url.rsplit(":", 1)[1])
    return sum(1 for c in psutil.Process(proc.pid).net_connections(kind="tcp")
               if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED)


@pytest.fixture
def sim_and_env(stack, simulator, sqlite_url):
    def make(**scenario):
        sim = simulator(**SCENARIO, **scenario)
        stack.configure(policy=POLICY, database_url=sqlite_url, base_url=sim.base_url)
        return sim
    return make


def test_slow_request_heads_are_cut_off_and_other_callers_still_served(stack, sim_and_env, tmp_path):
    sim_and_env()
    gw = start(stack, tmp_path, TIERGUARD_GATEWAY_HEADER_TIMEOUT="1")
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
        assert took < 1.0, f"a request took {took:.2f} s beside 50 slow callers"
        closed = [closed_at(sock, opened + 4) for sock in slow]
    finally:
        stop.set()
        dribbler.join()
        for sock in slow:
            sock.close()
    assert None not in closed, f"{closed.count(None)} of 50 slow callers still connected after 4 s"
    assert min(closed) - opened > 0.9, "a slow caller was cut before its timeout"
    assert max(closed) - opened < 2.5
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


def test_the_deadline_cuts_slow_answers_and_long_streams(stack, sim_and_env, tmp_path):
    sim = sim_and_env(stream_event_ms=400)  # 6 events: 2.4 s
    gw = start(stack, tmp_path, TIERGUARD_GATEWAY_DEADLINE="1.5")
    httpx2.post(sim.base_url + "/_sim/fail", json={"status": 0, "delay": 4, "count": 1})
    started = time.monotonic()
    late = httpx2.post(gw.base + "/v1/messages", json=BODY, headers=HEADERS, timeout=10)
    took = time.monotonic() - started
    assert late.status_code == 504 and 1.4 < took < 2.2, (late.status_code, took)
    assert late.json()["error"]["type"] == "api_error"
    assert "TIERGUARD_GATEWAY_DEADLINE" in late.json()["error"]["message"]
    started = time.monotonic()
    cut = httpx2.post(gw.base + "/v1/messages", json={**BODY, "stream": True}, headers=HEADERS, timeout=10)
    took = time.monotonic() - started
    assert cut.status_code == 200 and took < 2.2, took
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
