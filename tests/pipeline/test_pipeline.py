"""End to end on real parts: wrapper → Redis → Celery worker process → SDK over HTTP → database."""

import json
import os
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import anthropic
import httpx2
import redis
import sqlalchemy as sa
from sqlmodel import select

import tierguard
from tests.helpers import API_KEY, POLICY, QUEUES, SCENARIO, SYSTEM, samples, wait_until, wrapped_call
from tierguard.config import get_settings
from tierguard.contract.broker import make_celery
from tierguard.store.db import make_engine, session
from tierguard.store.tables import Alert, RouteChange, Sample


def test_drifting_category_flips_exactly_once(stack, simulator, postgres_url):
    sim = simulator(**SCENARIO)
    stack.configure(policy=POLICY, database_url=postgres_url, base_url=sim.base_url)
    stack.start_worker(concurrency=16)
    client = tierguard.ShadowedAnthropic(anthropic.Anthropic(max_retries=0))
    served: dict[str, list[str]] = {c: [] for c in SYSTEM}
    categories = list(SYSTEM)
    for i in range(2000):
        category = categories[i % 3]
        served[category].append(wrapped_call(client, category, i).model)
        if i % 100 == 99:  # keep the worker within ~100 requests of production
            client.tierguard_flush(10)
            wait_until(lambda i=i: samples(postgres_url) >= i - 100, 60, "the worker to catch up")
    assert client.tierguard_flush(30)
    stats = client.tierguard_stats()
    assert stats["published"] == 2000, stats
    wait_until(lambda: samples(postgres_url) == 2000, 120, "2000 samples")

    engine = make_engine(postgres_url)
    with session(engine) as s:
        changes = list(s.exec(select(RouteChange)))
        job_ids = list(s.exec(select(Sample.job_id)))
        errors = s.exec(sa.select(sa.func.count()).select_from(Sample)
                        .where(Sample.error.is_not(None))).one()[0]
    assert len(job_ids) == len(set(job_ids)) == 2000
    assert errors == 0
    assert [(c.category, c.from_model, c.to_model, c.actor) for c in changes] == [
        ("ticket-routing", "claude-haiku-4-5", "claude-opus-4-7", "auto")]
    assert changes[0].agreement < 0.90 and changes[0].rule == "cusum"
    # Production traffic for the drifting category moved to the reference, once and for good.
    routing = served["ticket-routing"]
    switch = routing.index("claude-opus-4-7")
    assert set(routing[:switch]) == {"claude-haiku-4-5"} and set(routing[switch:]) == {"claude-opus-4-7"}
    assert 300 < switch < 667
    for other in ("sentiment", "invoice-extraction"):
        assert set(served[other]) == {"claude-haiku-4-5"}
    # After the flip the shadow measures the candidate.
    with session(engine) as s:
        late = s.exec(select(Sample).where(Sample.category == "ticket-routing",
                                           Sample.served_model == "claude-opus-4-7")).all()
    assert late and {x.shadow_model for x in late} == {"claude-haiku-4-5"}
    client.tierguard_close()


def test_api_errors_are_retried_and_never_disagreements(stack, simulator, sqlite_url):
    sim = simulator(**SCENARIO)
    # Six attempts: the storm's 45 failures go to whichever calls come first, and on a busy host a
    # few jobs retrying alone can meet four of them.
    stack.configure(policy=POLICY, database_url=sqlite_url, base_url=sim.base_url,
                    shadow_max_attempts=6)
    client = tierguard.ShadowedAnthropic(anthropic.Anthropic(max_retries=0))
    for i in range(60):
        wrapped_call(client, "sentiment", i)
    assert client.tierguard_flush(10)
    # A storm of 429/529/500 hits the shadow calls; every job still gets its answer.
    for status in (429, 529, 500):
        httpx2.post(sim.base_url + "/_sim/fail",
                    json={"status": status, "count": 15, "retry_after": 0.05})
    stack.start_worker(concurrency=4)
    wait_until(lambda: samples(sqlite_url) == 60, 90, "60 samples")
    with session(make_engine(sqlite_url)) as s:
        rows = list(s.exec(select(Sample)))
    assert [r for r in rows if r.error] == []
    assert max(r.attempts for r in rows) > 1
    assert {r.agree for r in rows} <= {True, False}

    # An outage longer than the retry budget: recorded as errors, not disagreements.
    stack.stop_workers()
    for i in range(20):
        wrapped_call(client, "sentiment", 1000 + i)
    assert client.tierguard_flush(10)
    httpx2.post(sim.base_url + "/_sim/fail", json={"status": 529, "count": 1000, "retry_after": 0.05})
    stack.start_worker(concurrency=4)
    wait_until(lambda: samples(sqlite_url) == 80, 90, "80 samples")
    with session(make_engine(sqlite_url)) as s:
        failed = list(s.exec(select(Sample).where(Sample.error.is_not(None))))
        changes = list(s.exec(select(RouteChange)))
    assert len(failed) == 20
    assert {(r.error, r.agree, r.attempts) for r in failed} == {("overloaded", None, 6)}
    assert all("gave up after 6 attempts" in r.reason for r in failed)
    assert changes == []
    client.tierguard_close()


class _PlainMessagesAPI(BaseHTTPRequestHandler):
    """A minimal Messages API written from the public docs, unrelated to tierguard's simulator."""

    protocol_version = "HTTP/1.1"
    answers = {"claude-haiku-4-5": "NEGATIVE", "claude-opus-4-7": "POSITIVE"}
    seen_keys: list[str] = []

    def log_message(self, *args):
        pass

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen_keys.append(self.headers.get("x-api-key") or self.headers.get("authorization", ""))
        out = json.dumps({"id": "msg_1", "type": "message", "role": "assistant",
                          "model": body["model"],
                          "content": [{"type": "text", "text": self.answers[body["model"]]}],
                          "stop_reason": "end_turn", "stop_sequence": None,
                          "usage": {"input_tokens": 10, "output_tokens": 1}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


def test_loop_works_against_another_messages_api_server(stack, sqlite_url):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _PlainMessagesAPI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        stack.configure(policy={**POLICY, "defaults": {**POLICY["defaults"], "min_samples": 20}},
                        database_url=sqlite_url, base_url=f"http://127.0.0.1:{server.server_port}")
        stack.start_worker(concurrency=4)
        client = tierguard.ShadowedAnthropic(anthropic.Anthropic(max_retries=0))
        for i in range(20):
            assert wrapped_call(client, "sentiment", i).content[0].text == "NEGATIVE"
        client.tierguard_flush(10)
        wait_until(lambda: samples(sqlite_url) == 20, 60, "20 samples")
        with session(make_engine(sqlite_url)) as s:
            changes = list(s.exec(select(RouteChange)))
            reasons = {r.reason for r in s.exec(select(Sample))}
        assert reasons == {"label NEGATIVE vs POSITIVE"}
        assert [(c.category, c.to_model, c.samples) for c in changes] == [
            ("sentiment", "claude-opus-4-7", 20)]
        wait_until(lambda: wrapped_call(client, "sentiment", 99).model == "claude-opus-4-7", 10,
                   "production to follow the flip")
        assert API_KEY in " ".join(_PlainMessagesAPI.seen_keys)
        client.tierguard_close()
    finally:
        server.shutdown()


def hold_the_restore_lock_as_a_killed_worker_would(stack):
    """kombu's restore lock taken through the worker's own broker settings and never released
    (a worker killed inside its once-a-second restore leaves it so)."""
    app = make_celery(get_settings(redis_url=stack.env["TIERGUARD_REDIS_URL"], visibility_timeout=5))
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        key, expire = channel.qos.unacked_mutex_key, channel.qos.unacked_mutex_expire
        # As kombu's Mutex takes it, minus the release (a Mutex entered and dropped here would be
        # released when the generator is collected). False: the victim was killed holding it.
        channel.client.lock(key, timeout=expire).acquire(blocking=False)
    r = redis.Redis.from_url(stack.env["TIERGUARD_REDIS_URL"])
    assert 0 < r.ttl(key) <= 10  # still held, and for no longer than the workers' setting


def test_killed_worker_jobs_are_redelivered_and_counted_once(stack, simulator, postgres_url):
    sim = simulator(**{**SCENARIO, "latency_ms": 1500})
    stack.configure(policy=POLICY, database_url=postgres_url, base_url=sim.base_url,
                    visibility_timeout=5)
    client = tierguard.ShadowedAnthropic(anthropic.Anthropic(max_retries=0))
    for i in range(40):  # production calls are slow here too; send them in parallel
        threading.Thread(target=wrapped_call, args=(client, "sentiment", i)).start()
    wait_until(lambda: client.tierguard_stats().get("published", 0) == 40, 30, "40 published")
    try:
        victim = stack.start_worker(concurrency=40)
        time.sleep(1.0)  # every job is in flight, none finished (each call takes 1.5 s)
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait()
        assert samples(postgres_url) == 0
        hold_the_restore_lock_as_a_killed_worker_would(stack)
        stack.start_worker(concurrency=40)
        wait_until(lambda: samples(postgres_url) == 40, 60, "all 40 jobs after redelivery")
        time.sleep(3)  # a duplicate delivery would show up now
        with session(make_engine(postgres_url)) as s:
            assert len(s.exec(select(Sample.job_id)).all()) == 40
    finally:  # a client left open would copy its database's routes into the next test's Redis
        client.tierguard_close()


def test_eight_workers_racing_on_one_category_flip_it_once(stack, simulator, postgres_url,
                                                           receiver):
    sim = simulator(latency_ms=300,
                    categories={"race": {"kind": "label", "labels": QUEUES, "agreement": 0.0}})
    stack.configure(policy={"defaults": {"sample_rate": 1.0, "min_samples": 20},
                            "categories": {"race": {"comparator": {"type": "label", "labels": QUEUES}}},
                            "alerts": [{"type": "webhook", "url": receiver.url + "/hook"}]},
                    database_url=postgres_url, base_url=sim.base_url,
                    publish_jobs_per_message=5)  # 40+ messages: every worker gets some to race with
    client = tierguard.ShadowedAnthropic(anthropic.Anthropic(max_retries=0))
    threads = [threading.Thread(target=client.messages.create, kwargs=dict(
        category="race", max_tokens=8, system="race: route",
        messages=[{"role": "user", "content": f"ticket {i}"}])) for i in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert client.tierguard_flush(10)
    for _ in range(8):  # all queued first, so the workers race from the start
        stack.start_worker(concurrency=4, wait=False)
    stack.wait_ready()
    wait_until(lambda: samples(postgres_url) == 200, 90, "200 samples")
    with session(make_engine(postgres_url)) as s:
        changes = list(s.exec(select(RouteChange)))
    busy = [log for log in stack.logs() if log.count("succeeded in") > 0]
    assert len(busy) >= 4, "the jobs should have been spread over the workers"
    assert all("garbage collector: thresholds (50000, 10, 10)" in log for log in stack.logs())
    wait_until(lambda: len(receiver.requests) >= 1, 30, "the demotion alert")
    time.sleep(2)  # a duplicate would arrive now
    assert [r.json["event"] for r in receiver.requests] == ["demoted"]
    assert [(c.category, c.to_model, c.applied) for c in changes] == [
        ("race", "claude-opus-4-7", True)]
    client.tierguard_close()


def test_beat_redelivers_an_alert_until_the_channel_is_back(stack, simulator, sqlite_url, receiver):
    sim = simulator(categories={"race": {"kind": "label", "labels": QUEUES, "agreement": 0.0}})
    stack.configure(policy={"defaults": {"sample_rate": 1.0, "min_samples": 20},
                            "categories": {"race": {"comparator": {"type": "label", "labels": QUEUES}}},
                            "alerts": [{"type": "webhook", "url": receiver.url + "/hook"}]},
                    database_url=sqlite_url, base_url=sim.base_url, alert_sweep_seconds=1)
    receiver.fail_next = 2  # the channel is down for the first two attempts
    stack.start_worker(concurrency=4)
    stack.start_beat()
    client = tierguard.ShadowedAnthropic(anthropic.Anthropic(max_retries=0))
    for i in range(30):
        client.messages.create(category="race", max_tokens=8, system="race: route",
                               messages=[{"role": "user", "content": f"ticket {i}"}])
    client.tierguard_flush(10)
    wait_until(lambda: len(receiver.requests) == 1, 60, "the alert after the channel recovered")
    time.sleep(3)
    assert len(receiver.requests) == 1 and receiver.requests[0].json["event"] == "demoted"
    with session(make_engine(sqlite_url)) as s:
        alert = s.exec(select(Alert)).one()
    assert (alert.status, alert.attempts) == ("delivered", 3)
    client.tierguard_close()
