"""Comparisons never block the worker's event loop: they run off it, within a time budget, and a
comparison past it is recorded as comparator_timeout while the other jobs go on."""

import asyncio
import threading
import time
import uuid

import anthropic
import redis
from sqlmodel import select

from tests.helpers import API_KEY
from tests.pipeline.slow_comparator import FINISHED
from tierguard.compare.similarity import Similarity
from tierguard.contract.job import ShadowJob
from tierguard.pipeline import flow
from tierguard.pipeline.context import Context
from tierguard.pipeline.fanout import LoopRunner
from tierguard.policy import parse_policy
from tierguard.store.db import session
from tierguard.store.tables import Sample

LABELS = ["RED", "GREEN"]
POLICY = parse_policy({"categories": {
    "slow": {"comparator": {"type": "tests.pipeline.slow_comparator:Slow", "seconds": 3}},
    "labels": {"comparator": {"type": "label", "labels": LABELS}}}})


def job(category: str, i: int, primary: str = "RED") -> dict:
    return ShadowJob(job_id=uuid.uuid4().hex, category=category, served_model="claude-haiku-4-5",
                     shadow_model="claude-opus-4-7",
                     request={"max_tokens": 8, "system": f"{category}: pick",
                              "messages": [{"role": "user", "content": f"item {i}"}]},
                     primary_text=primary).to_dict()


def test_a_slow_comparison_is_a_recorded_timeout_and_the_loop_stays_free(engine, simulator, redis_url):
    sim = simulator(categories={"labels": {"kind": "label", "labels": LABELS},
                                "slow": {"kind": "label", "labels": LABELS}})
    runner = LoopRunner(lambda: anthropic.AsyncAnthropic(base_url=sim.base_url, api_key=API_KEY,
                                                         max_retries=0), compare_timeout=0.5)
    ctx = Context(policy=POLICY, engine=engine, redis=redis.Redis.from_url(redis_url), runner=runner)
    lags, done = [], threading.Event()

    def probe() -> None:  # how long the loop takes to run a trivial coroutine, every 50 ms
        while not done.is_set():
            t0 = time.monotonic()
            asyncio.run_coroutine_threadsafe(asyncio.sleep(0), runner.loop).result()
            lags.append(time.monotonic() - t0)
            time.sleep(0.05)

    # First use (SDK types, SQL compiled, clients made) is slow under the burner's hold on the GIL:
    # done first, so the window below holds only what the test is about (it failed run alone).
    assert flow.run(ctx, [job("labels", 99)], 1, max_attempts=3, retry_cap=1.0).recorded == 1
    watcher = threading.Thread(target=probe, daemon=True)
    watcher.start()
    mine = uuid.uuid4().hex
    after = flow.run(ctx, [job("slow", 0, mine)] + [job("labels", i) for i in range(6)], 1, max_attempts=3,
                     retry_cap=1.0)
    assert after.recorded == 7 and mine not in FINISHED  # recorded while the slow comparison still ran
    done.set()
    watcher.join()
    # On the loop, the 3 s comparison would stall it for seconds (bound with room for a busy host).
    assert max(lags) < 1.5, f"the loop stalled for {max(lags):.2f}s"
    with session(engine) as s:
        rows = {r.category: r for r in s.exec(select(Sample))}
        errors = [r.error for r in s.exec(select(Sample).where(Sample.category == "labels"))]
    assert rows["slow"].error == "comparator_timeout" and "0.5s" in rows["slow"].reason
    assert errors == [None] * 7


def test_rouge_l_on_a_crafted_half_megabyte_answer_is_bounded():
    crafted = " ".join(f"w{i % 997}" for i in range(80_000))  # ~500 KB
    t0 = time.process_time()
    verdict = Similarity("rougeL", 0.8).compare(crafted, crafted)
    assert time.process_time() - t0 < 1.0 and verdict.agree and verdict.detail["method"] == "f1"


def test_the_worker_loop_setting_picks_the_runners_loop(simulator):
    import pydantic
    import uvloop

    from tierguard.config import Settings

    sim = simulator(categories={"labels": {"kind": "label", "labels": LABELS}})
    assert Settings().worker_loop == "uvloop"  # the default: about 12 % less CPU per comparison
    for kind, loop_type in (("uvloop", uvloop.Loop), ("asyncio", asyncio.BaseEventLoop)):
        runner = LoopRunner(lambda: anthropic.AsyncAnthropic(base_url=sim.base_url, api_key=API_KEY,
                                                             max_retries=0), loop=kind)

        async def call(runner: LoopRunner = runner) -> str:
            answer = await runner.client.messages.create(
                model="claude-opus-4-7", max_tokens=8, system="labels: pick",
                messages=[{"role": "user", "content": "item"}])
            return answer.content[0].text

        assert runner.run(call()) in LABELS
        assert isinstance(runner.loop, loop_type)
        assert (kind == "uvloop") == isinstance(runner.loop, uvloop.Loop)
    try:
        Settings(worker_loop="trio")
    except pydantic.ValidationError as err:
        assert "worker_loop" in str(err) and "uvloop|asyncio" in str(err)
    else:
        raise AssertionError("an unknown loop was accepted")


def _self_signed(tmp_path) -> tuple[str, str]:
    """A certificate and key for 127.0.0.1, made here (PEM files)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_file), str(key_file)


def test_shadow_calls_over_tls_on_uvloop(tmp_path):
    """Workers call the API over HTTPS: the SDK's TLS connections on uvloop's loop, kept alive."""
    import http.server
    import json
    import ssl

    import httpx2

    cert, key = _self_signed(tmp_path)
    answer = json.dumps({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-opus-4-7",
                         "content": [{"type": "text", "text": "RED"}], "stop_reason": "end_turn",
                         "stop_sequence": None, "usage": {"input_tokens": 3, "output_tokens": 1}}).encode()
    connections = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            connections.append(self.client_address)

        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers["content-length"]))
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    server.socket = server_tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    trust = ssl.create_default_context(cafile=cert)
    runner = LoopRunner(lambda: anthropic.AsyncAnthropic(
        base_url=f"https://127.0.0.1:{server.server_address[1]}", api_key=API_KEY, max_retries=0,
        http_client=anthropic.DefaultAsyncHttpxClient(verify=trust, limits=httpx2.Limits(max_connections=4))),
        loop="uvloop")

    async def calls() -> list[str]:
        client = runner.client

        async def one(i: int) -> str:
            reply = await client.messages.create(model="claude-opus-4-7", max_tokens=8,
                                                 messages=[{"role": "user", "content": f"item {i}"}])
            return reply.content[0].text

        return await asyncio.gather(*(one(i) for i in range(40)))

    try:
        assert runner.run(calls()) == ["RED"] * 40
        assert type(runner.loop).__module__.startswith("uvloop")
        assert 1 <= len(connections) <= 4  # kept alive: 40 calls over at most the pool's 4 connections
    finally:
        server.shutdown()
