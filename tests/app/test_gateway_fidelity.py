"""The gateway in front of real networks: proxies, private CAs, big, broken, encoded and non-Latin bodies.

A real ``tierguard gateway`` process in front of the simulator, which shows each
``/v1/messages`` request as it received it (``GET /_sim/requests``).
"""

import gzip
import json
import socket
import subprocess
import sys
import threading
import time
import zlib

import httpx2
import pytest
from sqlmodel import select

from tests.app.gatewayparts import BODY, HEADERS, LABELS, POLICY, ROUTED, SCENARIO
from tests.app.netparts import ForwardProxy, TLSFront, make_ca
from tests.helpers import samples, wait_until
from tierguard.store.db import make_engine, session
from tierguard.store.tables import Sample

NETWORK_VARIABLES = ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "SSL_CERT_FILE",
                     "SSL_CERT_DIR"]


@pytest.fixture(autouse=True)
def plain_network(monkeypatch):
    """No proxy or CA settings from the machine: each test sets its own, for the gateway only."""
    for name in NETWORK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture
def proxy():
    p = ForwardProxy()
    yield p
    p.stop()


def seen(sim):
    """The /v1/messages requests the simulator received: (headers, body bytes) each."""
    got = httpx2.get(sim.base_url + "/_sim/requests").json()["requests"]
    return [(r["headers"], r["body"].encode()) for r in got]


def gw_stats(base):
    return httpx2.get(base + "/tierguard/stats").json()


def routed_bytes(raw: bytes, sent_model: str = "claude-opus-4-7") -> bytes:
    """``raw`` as the upstream must see it: the same bytes but for the model's value."""
    assert raw.count(f'"{sent_model}"'.encode()) == 1
    return raw.replace(f'"{sent_model}"'.encode(), f'"{ROUTED}"'.encode())


def test_an_https_upstream_through_a_connect_proxy_trusting_a_private_ca(stack, simulator, sqlite_url,
                                                                          proxy, tmp_path):
    sim = simulator(**SCENARIO)
    ca, cert, key = make_ca(tmp_path)
    front = TLSFront(cert, key, ("127.0.0.1", int(sim.base_url.rsplit(":", 1)[1])))
    try:
        stack.configure(policy=POLICY, database_url=sqlite_url, base_url=sim.base_url)
        base = stack.start_gateway(TIERGUARD_UPSTREAM_URL=front.url, HTTPS_PROXY=proxy.url,
                                   SSL_CERT_FILE=str(ca))
        answer = httpx2.post(base + "/v1/messages", json=BODY, headers=HEADERS)
        assert answer.status_code == 200, answer.text
        assert answer.json()["model"] == ROUTED
        # Through the proxy's tunnel, to a server verified against the private CA.
        connect = f"CONNECT localhost:{front.url.rsplit(':', 1)[1]}"
        assert proxy.seen == [connect]
        assert [json.loads(body)["model"] for _, body in seen(sim)] == [ROUTED]
        # Without SSL_CERT_FILE the machine's CAs do not know that server: verified, refused.
        untrusting = stack.start_gateway(TIERGUARD_UPSTREAM_URL=front.url, HTTPS_PROXY=proxy.url)
        refused = httpx2.post(untrusting + "/v1/messages", json=BODY, headers=HEADERS)
        assert refused.status_code == 502 and refused.json()["error"]["type"] == "api_error"
        assert proxy.seen == [connect, connect] and len(seen(sim)) == 1
    finally:
        front.stop()


def test_a_plain_http_upstream_uses_http_proxy_or_all_proxy_unless_no_proxy_covers_it(
        stack, simulator, sqlite_url, proxy):
    sim = simulator(**SCENARIO)
    stack.configure(policy=POLICY, database_url=sqlite_url, base_url=sim.base_url)
    target = f"POST {sim.base_url}/v1/messages"
    for env, through_proxy in [({"HTTP_PROXY": proxy.url}, True), ({"ALL_PROXY": proxy.url}, True),
                               ({"HTTP_PROXY": proxy.url, "NO_PROXY": "localhost,127.0.0.1"}, False)]:
        before = len(proxy.seen)
        base = stack.start_gateway(**env)
        answer = httpx2.post(base + "/v1/messages", json=BODY, headers=HEADERS)
        assert answer.status_code == 200 and answer.json()["model"] == ROUTED, (env, answer.text)
        assert proxy.seen[before:] == ([target] if through_proxy else []), env
    assert len(seen(sim)) == 3


def vm_peak_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_a_body_over_the_limit_is_a_413_without_reading_it_and_nothing_goes_upstream(
        stack, simulator, sqlite_url):
    sim = simulator(**SCENARIO)
    stack.configure(policy=POLICY, database_url=sqlite_url, base_url=sim.base_url)
    base = stack.start_gateway()
    pid = stack.others[-1].pid
    big = json.dumps({**BODY, "messages": [{"role": "user", "content": "x" * (40 << 20)}]}).encode()
    peak = vm_peak_kib(pid)
    with httpx2.Client(base_url=base, timeout=60) as client:
        for headers in (HEADERS, {k: v for k, v in HEADERS.items() if k != "x-tierguard-category"}):
            refused = client.post("/v1/messages", content=big, headers=headers)  # Content-Length
            assert refused.status_code == 413
            assert refused.json() == {"type": "error", "error": {
                "type": "request_too_large", "message": refused.json()["error"]["message"]}}
        # Refused on its Content-Length: the gateway read none of it into memory.
        assert vm_peak_kib(pid) - peak < 8 << 10, "the gateway held a refused body in memory"
        chunks = (big[i:i + (1 << 20)] for i in range(0, len(big), 1 << 20))
        refused = client.post("/v1/messages", content=chunks, headers=HEADERS)  # chunked: no length
        assert refused.status_code == 413
        assert refused.json()["error"]["type"] == "request_too_large"
        # Refused once past the limit: at most the limit's worth (32 MiB) was held, not 40 MB.
        assert vm_peak_kib(pid) - peak < 38 << 10, "the gateway held the whole body in memory"
        # A gzip bomb: 40 MB decoded from 40 KB sent.
        bomb = client.post("/v1/messages", content=gzip.compress(big),
                           headers={**HEADERS, "content-encoding": "gzip"})
        assert bomb.status_code == 413 and bomb.json()["error"]["type"] == "request_too_large"
        # The same connection and gateway still serve; the upstream saw only that one request.
        assert client.post("/v1/messages", json=BODY, headers=HEADERS).status_code == 200
    assert [json.loads(body)["model"] for _, body in seen(sim)] == [ROUTED]
    assert gw_stats(base)["too_large"] == 4


def test_a_caller_leaving_mid_body_sends_nothing_upstream(stack, simulator, sqlite_url):
    sim = simulator(**SCENARIO)
    stack.configure(policy=POLICY, database_url=sqlite_url, base_url=sim.base_url)
    base = stack.start_gateway()
    host, port = base.removeprefix("http://").split(":")
    whole = json.dumps(BODY).encode() + b" " * 4096  # what was sent before leaving is valid JSON
    for category in (True, False):
        sock = socket.create_connection((host, int(port)))
        head = "".join(f"{k}: {v}\r\n" for k, v in HEADERS.items()
                       if category or k != "x-tierguard-category")
        sock.sendall(f"POST /v1/messages HTTP/1.1\r\nhost: {host}\r\ncontent-length: {len(whole)}\r\n"
                     f"{head}\r\n".encode() + whole[:len(whole) // 2])
        time.sleep(0.2)  # the gateway has read the part sent
        sock.close()
    wait_until(lambda: gw_stats(base).get("caller_left") == 2 or seen(sim), 10,
               "the gateway to see both callers leave")
    time.sleep(0.3)
    assert seen(sim) == [], "a partial body was sent upstream"
    assert gw_stats(base)["caller_left"] == 2


NON_LATIN = ("Посылка пришла повреждённой, коробка смята. 包裹到达时已损坏，盒子被压扁了。"
             "الطرد وصل تالفاً والصندوق مسحوق. पार्सल क्षतिग्रस्त पहुँचा। 小包が破損して届きました 📦💥 ")


def test_a_non_latin_body_goes_upstream_byte_for_byte_but_for_its_model(stack, simulator, sqlite_url):
    sim = simulator(**SCENARIO)
    stack.configure(policy=POLICY, database_url=sqlite_url, base_url=sim.base_url)
    base = stack.start_gateway()
    text = NON_LATIN * 40  # ~9 KB of UTF-8; escaped as \\uXXXX it would be about twice as big
    # Key order, spacing and escapes as some client wrote them, the model in the middle.
    raw = ('{\n  "max_tokens" : 8,\n  "system": "sentiment: classify \\u00e9t\\u00e9",\t"model":'
           '  "claude-opus-4-7" ,\n  "messages": [ {"content": "' + text + '", "role": "user"} ]\n}\n'
           ).encode()
    missing = ('{"messages":[{"role":"user","content":"' + text + '"}],"max_tokens":8,'
               '"system":"sentiment: classify"}').encode()
    already = routed_bytes(raw)
    for body in (raw, missing, already):
        answer = httpx2.post(base + "/v1/messages", content=body, headers=HEADERS)
        assert answer.status_code == 200 and answer.json()["model"] == ROUTED, answer.text
    got = seen(sim)
    assert [body for _, body in got] == [routed_bytes(raw), b'{"model": "' + ROUTED.encode() + b'", '
                                         + missing[1:], already]
    sizes = [int(h["content-length"]) for h in httpx2.get(sim.base_url + "/_sim/stats").json()[
        "recent_headers"]]
    assert sizes == [len(body) for _, body in got]


def test_gzip_and_deflate_bodies_are_routed_and_shadowed_with_their_betas(stack, simulator, sqlite_url):
    sim = simulator(**SCENARIO)
    stack.configure(policy=POLICY, database_url=sqlite_url, base_url=sim.base_url)
    stack.start_worker(concurrency=4)
    base = stack.start_gateway()
    beta = {"anthropic-beta": "context-management-2025-06-27"}
    raw = json.dumps({**BODY, "messages": [{"role": "user", "content": NON_LATIN}],
                      "context_management": {"edits": []}}, ensure_ascii=False).encode()
    encoded = {"gzip": gzip.compress(raw), "deflate": zlib.compress(raw)}
    for coding, body in encoded.items():
        answer = httpx2.post(base + "/v1/messages", content=body,
                             headers={**HEADERS, **beta, "content-encoding": coding})
        assert answer.status_code == 200, answer.text
        assert answer.json()["model"] == ROUTED and answer.json()["content"][0]["text"] in LABELS
    wait_until(lambda: samples(sqlite_url) == 2, 60, "a sample for each encoded request")
    with session(make_engine(sqlite_url)) as s:
        assert [row.error for row in s.exec(select(Sample))] == [None, None]
    production = [(h, body) for h, body in seen(sim) if json.loads(body)["model"] == ROUTED]
    assert [body for _, body in production] == [routed_bytes(raw)] * 2
    assert all("content-encoding" not in h for h, _ in production)
    # The shadows went with the production call's beta (its body field needs it).
    shadows = [h for h, body in seen(sim) if json.loads(body)["model"] != ROUTED]
    assert len(shadows) == 2 and all(h.get("anthropic-beta") == beta["anthropic-beta"]
                                     for h in shadows)


PROBE = r"""
import sys, time, httpx2
with httpx2.Client(base_url=sys.argv[1]) as client:
    client.get("/healthz")
    print("ready", flush=True)
    while not sys.stdin.readline().strip():  # a blank line: one more round
        waits = []
        for _ in range(int(sys.argv[2])):
            started = time.perf_counter()
            client.get("/healthz")
            waits.append(time.perf_counter() - started)
            time.sleep(0.002)
        print(max(waits), flush=True)
"""


def worst_wait(client: httpx2.Client, probe: subprocess.Popen, big: bytes) -> float:
    """The longest health check while three large bodies go through the gateway."""
    sent = threading.Thread(target=lambda: [
        client.post("/v1/messages", content=big, headers=HEADERS) for _ in range(3)])
    sent.start()
    worst = 0.0
    while sent.is_alive():
        probe.stdin.write("\n")
        probe.stdin.flush()
        worst = max(worst, float(probe.stdout.readline()))
    sent.join()
    return worst


def test_a_large_body_does_not_hold_other_requests_up(stack, simulator, sqlite_url):
    sim = simulator(**SCENARIO)
    # Not sampled: what is measured is the gateway's own reading of the body.
    stack.configure(policy={**POLICY, "defaults": {"sample_rate": 0.0}}, database_url=sqlite_url,
                    base_url=sim.base_url)
    base = stack.start_gateway()
    blocks = [{"type": "text", "text": NON_LATIN}] * 3
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": blocks} for i in range(11501)]
    big = json.dumps({**BODY, "messages": turns}, ensure_ascii=False).encode()
    assert len(big) > 12_000_000
    # Health checks from another process (the simulator, in this one, parses the 12 MB too).
    probe = subprocess.Popen([sys.executable, "-c", PROBE, base, "20"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    tries = []
    try:
        assert probe.stdout.readline().strip() == "ready"
        with httpx2.Client(base_url=base, timeout=60) as client:
            client.post("/v1/messages", content=big, headers=HEADERS)  # warm up: code paths, pools
            # Up to five rounds: a busy host (parallel tests) can stall some (three once all
            # stalled in a full run); a body parsed on the event loop stalls every round.
            while len(tries) < 5 and (not tries or tries[-1] >= 0.075):
                tries.append(worst_wait(client, probe, big))
    finally:
        probe.kill()
        probe.wait()
    served = httpx2.get(sim.base_url + "/_sim/stats", timeout=30).json()["requests"]
    assert sum(r["count"] for r in served) == 1 + 3 * len(tries)
    worst = tries[-1]
    assert worst < 0.075, f"a health check waited {worst * 1000:.0f} ms behind a 12 MB body"
