"""``tierguard bench gateway`` on a short run: the direct floor, tierguard's gateway and nginx measured
in one run, with the JSON a user reads; LiteLLM's proxy measured too or said to be unavailable."""

import os
import subprocess
import sys

import pytest

from tests.helpers import last_json
from tierguard.bench.contenders import NGINX_INSTALL, nginx_binary

FIELDS = {"added_p50_ms", "added_p99_ms", "ttfe_added_p50_ms", "rps", "cpu_ms_per_request"}


def test_the_gateway_is_measured_beside_the_direct_call_and_nginx_in_one_run(tmp_path):
    assert nginx_binary(), f"this test runs nginx beside the gateway; install it: {NGINX_INSTALL}"
    done = subprocess.run([sys.executable, "-m", "tierguard", "bench", "gateway", "--json",
                           "--requests", "30", "--seconds", "0.4", "--max-connections", "2"],
                          capture_output=True, text=True, env=dict(os.environ), cwd=tmp_path, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    fig = last_json(done.stdout)
    table = fig["contenders"]
    for name in ("direct", "tierguard", "nginx"):
        figures = table[name]
        assert FIELDS <= set(figures), (name, figures)
        first = figures["load"][0]  # rps is 0 only if p99 passed 50 ms at once (a machine that busy)
        assert first["connections"] == 1 and first["requests"] > 0 and figures["rps"] >= 0, (name, figures)
        assert figures["cpu_ms_per_request"] > 0, (name, figures)
        assert figures["p50_ms"] > 0 and figures["ttfe_p50_ms"] > 0
    assert table["direct"]["added_p50_ms"] == 0 and table["direct"]["ttfe_added_p50_ms"] == 0
    litellm = table["litellm"]  # measured when its proxy can run here, else why not
    assert FIELDS <= set(litellm) or (set(litellm) == {"unavailable"} and "litellm" in litellm["unavailable"]
                                      .lower()), litellm
    tierguard = table["tierguard"]  # the older top-level keys are tierguard's figures
    older = (fig["added_p50_ms"], fig["added_p99_ms"], fig["added_ttfe_ms"], fig["gateway_rps"])
    assert older == (tierguard["added_p50_ms"], tierguard["added_p99_ms"], tierguard["ttfe_added_p50_ms"],
                     tierguard["rps"])
    assert fig["load"] == tierguard["load"] and fig["requests"] == 30
    assert set(fig["goals_met"]) == set(fig["goals"]) and fig["goals"]["added_p50_ms"] == 0.5
    assert fig["goals_met"]["nginx_ratio"] is not None  # nginx measured: the ratio goal is judged


def test_a_contender_that_cannot_run_says_why(tmp_path, monkeypatch):
    from tierguard.bench import contenders

    monkeypatch.setenv("TIERGUARD_BENCH_LITELLM", str(tmp_path / "no-such-litellm"))
    with pytest.raises(contenders.Unavailable, match="no-such-litellm does not exist"):
        contenders.start_litellm(tmp_path, 1, 2, "claude-opus-4-7", "sk-bench")


class _Servers:
    """Three local servers answering the bench's plain and streamed requests; ``arrivals``: the port
    each request reached, in order."""

    def __init__(self, n: int = 3):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        arrivals = self.arrivals = []

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                arrivals.append(self.server.server_address[1])
                streamed = b'"stream": true' in body
                answer = b"event: message_stop\ndata: {}\n\n" if streamed else b'{"type": "message"}'
                self.send_response(200)
                if streamed:
                    self.send_header("transfer-encoding", "chunked")
                    self.end_headers()
                    self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(answer), answer))
                else:
                    self.send_header("content-length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.servers = [ThreadingHTTPServer(("127.0.0.1", 0), Handler) for _ in range(n)]
        for server in self.servers:
            threading.Thread(target=server.serve_forever, daemon=True).start()

    def proxies(self, names: list[str]):
        from tierguard.bench import gateway

        return [gateway.Proxy(name, s.server_address[1], 0)
                for name, s in zip(names, self.servers, strict=True)]

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()


def test_each_timed_request_follows_its_own_contenders_request():
    """The rotation puts each contender after the same other one every round; an untimed request opens
    each turn, so a timed one never pays for another contender's work after its answer."""
    from tierguard.bench import gateway

    with _Servers() as servers:
        proxies = servers.proxies(["p0", "p1", "p2"])
        gateway._interleaved(proxies, requests=4, warm=2)
    arrivals = servers.arrivals
    assert all(len(p.times) == 4 and len(p.ttfe) == 4 for p in proxies)
    turns = [arrivals[i:i + 3] for i in range(0, len(arrivals), 3)]
    assert len(turns) == 6 * 3 and all(len(set(turn)) == 1 for turn in turns), arrivals
    assert [turn[0] for turn in turns[:3]] != [turn[0] for turn in turns[3:6]]  # the order rotates


def test_litellm_is_timed_in_a_pass_of_its_own_beside_direct():
    """LiteLLM's leftover work after each answer never falls between the others' turns: it is
    interleaved after them, with a ``direct`` of its own that its added time is measured against."""
    from tierguard.bench import gateway

    with _Servers() as servers:
        proxies = servers.proxies(["direct", "tierguard", "litellm"])
        beside = gateway._timed(proxies, requests=10)
    direct, tierguard, litellm = (s.server_address[1] for s in servers.servers)
    first_litellm = servers.arrivals.index(litellm)
    assert set(servers.arrivals[:first_litellm]) == {direct, tierguard}  # the others' pass, then
    assert set(servers.arrivals[first_litellm:]) == {direct, litellm}  # LiteLLM's beside direct
    assert list(beside) == ["litellm"] and beside["litellm"] is not proxies[0]
    assert len(beside["litellm"].times) == len(proxies[0].times) == len(proxies[2].times) == 10
