"""Faults on real parts: Redis and PostgreSQL going away mid-traffic, hostile input, oversized payloads."""

import time
import uuid

import anthropic
import httpx2
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlmodel import select

import tierguard
from tests.helpers import API_KEY, POLICY, QUEUES, SCENARIO, samples, wait_until, wrapped_call
from tierguard.compare import Verdict
from tierguard.contract.job import ShadowJob
from tierguard.errors import ConfigError
from tierguard.pipeline.calls import Answer
from tierguard.pipeline.flow import backoff
from tierguard.pipeline.recorder import record
from tierguard.policy import parse_policy
from tierguard.sim.servers import PostgresServer, free_port
from tierguard.store.db import make_engine, session
from tierguard.store.tables import RouteChange, Sample


@pytest.fixture
def redis_server(private_redis):
    """This module's tests stop and restart Redis: each has its own."""
    return private_redis


def test_redis_stopped_and_restarted_mid_traffic(stack, simulator, sqlite_url, redis_server):
    sim = simulator(**SCENARIO)
    port = free_port()
    stack.configure(policy=POLICY, database_url=sqlite_url, base_url=sim.base_url, metrics_port=port)
    worker = stack.start_worker(concurrency=8)

    def probe(path):
        r = httpx2.get(f"http://127.0.0.1:{port}{path}", timeout=10)
        return r.status_code, r.text.strip()

    client = tierguard.ShadowedAnthropic(anthropic.Anthropic(max_retries=0))
    for i in range(60):
        wrapped_call(client, "sentiment", i)
    client.tierguard_flush(10)
    wait_until(lambda: samples(sqlite_url) == 60, 60, "the first 60 samples")
    assert probe("/livez") == (200, "alive") and probe("/readyz") == (200, "ready")

    redis_server.stop()
    down = [wrapped_call(client, "sentiment", 100 + i) for i in range(60)]
    assert all(m.content for m in down)  # production never notices
    client.tierguard_flush(10)
    stats = client.tierguard_stats()
    assert stats["dropped_broker_down"] == 60 and stats["internal_errors"] == 0
    # The broker is gone: not ready, but alive — a liveness probe must not restart the worker.
    status, reason = probe("/readyz")
    assert status == 503 and reason.startswith("broker redis://127.0.0.1:") and "unreachable" in reason
    assert probe("/livez") == (200, "alive") and worker.poll() is None

    redis_server.start()  # same port, empty: the worker and the wrapper reconnect by themselves
    wait_until(lambda: probe("/readyz")[0] == 200, 30, "ready again")
    time.sleep(1.5)  # the publisher's pause after a broker failure
    for i in range(60):
        wrapped_call(client, "sentiment", 200 + i)
    client.tierguard_flush(10)
    assert client.tierguard_stats()["published"] == 120
    wait_until(lambda: samples(sqlite_url) == 120, 90, "samples after Redis came back")
    client.tierguard_close()


def test_postgres_down_loses_nothing_and_decisions_resume_takes_a_minute(stack, simulator):
    pg = PostgresServer().start()
    try:
        url = pg.create_database("outage")
        scenario = {"seed": 4, "categories": {
            "steady": {"kind": "label", "labels": QUEUES, "agreement": 1.0},
            "broken": {"kind": "label", "labels": QUEUES, "agreement": 0.0}}}
        sim = simulator(**scenario)
        policy = {"defaults": {"sample_rate": 1.0, "min_samples": 20}, "categories": {
            n: {"comparator": {"type": "label", "labels": QUEUES}} for n in ("steady", "broken")}}
        stack.configure(policy=policy, database_url=url, base_url=sim.base_url)
        stack.start_worker(concurrency=8)
        client = tierguard.ShadowedAnthropic(anthropic.Anthropic(max_retries=0))

        def call(category, i):
            return client.messages.create(category=category, max_tokens=8, system=f"{category}: q",
                                          messages=[{"role": "user", "content": f"t {i}"}])

        for i in range(40):
            call("steady", i)
        client.tierguard_flush(10)
        wait_until(lambda: samples(url) == 40, 60, "samples before the outage")

        before = sum(r["count"] for r in httpx2.get(sim.base_url + "/_sim/stats").json()["requests"])
        pg.stop()
        for i in range(40):
            assert call("broken", i).content
        client.tierguard_flush(10)
        time.sleep(60)
        pg.start()

        wait_until(lambda: samples(url) == 80, 120, "every sample after the outage")
        # No answer bought twice: 40 production calls and 40 shadows, however often the message ran.
        paid = sum(r["count"] for r in httpx2.get(sim.base_url + "/_sim/stats").json()["requests"]) - before
        assert paid == 80, f"{paid - 40} shadow calls for 40 jobs"
        with session(make_engine(url)) as s:
            job_ids = s.exec(select(Sample.job_id)).all()
            changes = s.exec(select(RouteChange)).all()
        assert len(job_ids) == len(set(job_ids)) == 80
        assert [(c.category, c.to_model) for c in changes] == [("broken", "claude-opus-4-7")]
        assert "database unavailable" in "".join(stack.logs())
        client.tierguard_close()
    finally:
        pg.destroy()


def test_backoff_honours_retry_after_with_a_cap():
    assert backoff(1, 2.0, 30) == 2.0
    assert backoff(3, 120.0, 30) == 30
    assert 0.4 <= backoff(1, None, 30) <= 0.6 and backoff(20, None, 30) <= 30


FIELDS = {
    # Text that is not a number ("0" or " 1 " would be read as one, and be valid).
    "defaults.sample_rate": st.one_of(st.floats(1.01, 1e6), st.floats(-1e6, -0.01),
                                      st.text(min_size=1, alphabet="abcxyz -_")),
    "defaults.threshold": st.one_of(st.floats(1.01, 10), st.floats(-10, -0.01), st.just([0.9])),
    "defaults.min_samples": st.one_of(st.integers(-100, 0), st.text(min_size=1, alphabet="abc")),
    "defaults.mode": st.text(min_size=1).filter(lambda t: t not in ("enforce", "observe")),
    "defaults.comparator": st.one_of(st.just("fuzzy"), st.just({"type": "label"}),
                                     st.just({"type": "json", "min_score": 3})),
    "models.candidate": st.one_of(st.integers(), st.just(["a"])),
    "pricing.m.input": st.one_of(st.floats(-100, -0.01), st.just("free")),
    "categories.x.sample_rate": st.floats(1.01, 100),
    "categories.x.unknown_key": st.integers(),
    "alerts.channels.0.type": st.text(min_size=1).filter(lambda t: t not in (
        "webhook", "slack", "pagerduty", "alertmanager", "grafana")),
}


def _nest(path: str, value):
    parts = path.split(".")
    if parts[0] == "alerts":
        return {"alerts": {"channels": [{"type": value}]}}
    out = value
    for part in reversed(parts):
        out = {part: out}
    return out


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), path=st.sampled_from(sorted(FIELDS)))
def test_malformed_policies_get_one_clear_error_naming_the_field(data, path):
    value = data.draw(FIELDS[path])
    with pytest.raises(ConfigError) as err:
        parse_policy(_nest(path, value), "generated.yaml")
    prefix = ".".join(path.split(".")[:2]) if path.startswith(("pricing", "categories")) else path
    prefix = "alerts.channels.0" if path.startswith("alerts") else prefix
    assert any(p.startswith(prefix) for p in err.value.problems), (path, value, err.value.problems)
    assert "Traceback" not in str(err.value)


def test_oversized_payloads_are_stored_truncated_with_hashes(engine):
    import hashlib

    big_prompt, big_answer = "p" * 1_000_000, "a" * 300_000
    job = ShadowJob(job_id=uuid.uuid4().hex, category="c", served_model="claude-haiku-4-5",
                    shadow_model="claude-opus-4-7",
                    request={"messages": [{"role": "user", "content": big_prompt}]},
                    primary_text=big_answer)
    verdict = Verdict(True, 1.0, "same")
    excerpt = parse_policy({"payloads": {"store": "excerpt", "excerpt_chars": 200}})
    record(engine, None, excerpt, job, Answer(big_answer, 1, 1, 1.0), verdict, None, 1)
    hashed = parse_policy({})
    job2 = ShadowJob(**{**job.to_dict(), "job_id": uuid.uuid4().hex})
    record(engine, None, hashed, job2, Answer(big_answer, 1, 1, 1.0), verdict, None, 1)
    with session(engine) as s:
        first, second = (s.get(Sample, job.job_id), s.get(Sample, job2.job_id))
    assert first.request_excerpt == "p" * 200 and first.shadow_excerpt == "a" * 200
    assert first.primary_hash == hashlib.sha256(big_answer.encode()).hexdigest()
    assert (second.request_excerpt, second.primary_excerpt, second.shadow_excerpt) == (None, None, None)
    assert second.request_hash == first.request_hash


def test_api_key_never_reaches_logs_or_database(stack, simulator, sqlite_url, capfd):
    import httpx2

    sim = simulator(**SCENARIO)
    stack.configure(policy={**POLICY, "payloads": {"store": "excerpt"}}, database_url=sqlite_url,
                    base_url=sim.base_url, shadow_max_attempts=2)
    stack.start_worker(concurrency=4)
    client = tierguard.ShadowedAnthropic(anthropic.Anthropic(max_retries=0))
    for i in range(10):
        wrapped_call(client, "sentiment", i)
    httpx2.post(sim.base_url + "/_sim/fail", json={"status": 401, "count": 5})
    for i in range(10):
        try:
            wrapped_call(client, "sentiment", 100 + i)
        except anthropic.AuthenticationError:
            pass
    client.tierguard_flush(10)
    wait_until(lambda: samples(sqlite_url) >= 10, 60, "samples")
    time.sleep(2)
    stack.stop_workers()
    with session(make_engine(sqlite_url)) as s:
        dump = repr([r.model_dump() for r in s.exec(select(Sample))])
        dump += repr(s.execute(sa.text("SELECT * FROM route_change")).all())
    logs = "".join(stack.logs()) + capfd.readouterr().err
    assert API_KEY not in dump and API_KEY not in logs
    client.tierguard_close()
