"""Sealed shadow jobs: prompts are ciphertext in the broker; a tampered job is an error, never run."""

import base64
import dataclasses
import json

import anthropic
import httpx2
import pytest
import redis
from cryptography.fernet import Fernet
from sqlmodel import select

import tierguard
from tests.helpers import samples, wait_until
from tierguard.config import get_settings
from tierguard.contract.broker import BATCH_TASK, make_celery
from tierguard.contract.job import ShadowJob, digest
from tierguard.contract.sealing import Sealer, open_job, seal_job
from tierguard.errors import ConfigError, PayloadInvalid
from tierguard.store.db import make_engine, session
from tierguard.store.tables import Sample

JOB = ShadowJob(job_id="j1", category="sentiment", served_model="claude-haiku-4-5",
                shadow_model="claude-opus-4-7", request={"messages": [{"role": "user", "content": "hi"}]},
                primary_text="POSITIVE")


def test_round_trip_rotation_and_tampering():
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    sealed_old = seal_job(JOB, Sealer([old]))
    assert sealed_old.request == {} and sealed_old.primary_text == ""
    assert "messages" not in sealed_old.sealed and "POSITIVE" not in sealed_old.sealed  # ciphertext
    rotated = Sealer([new, old])
    assert open_job(sealed_old, rotated) == JOB  # the old key still opens
    sealed_new = seal_job(JOB, rotated)
    assert open_job(sealed_new, Sealer([new])) == JOB  # the newest key seals
    with pytest.raises(PayloadInvalid):
        open_job(sealed_new, Sealer([old]))
    tampered = dataclasses.replace(sealed_new, sealed=sealed_new.sealed[:-6] + "AAAAAA")
    with pytest.raises(PayloadInvalid, match="does not open"):
        open_job(tampered, rotated)
    with pytest.raises(PayloadInvalid, match="no TIERGUARD_PAYLOAD_KEYS"):
        open_job(sealed_new, None)
    assert seal_job(JOB, None) == JOB and open_job(JOB, None) == JOB  # no key: plain, as before
    with pytest.raises(PayloadInvalid, match="unsealed, unsigned job refused"):
        open_job(JOB, rotated)  # a worker with keys runs only sealed jobs
    with pytest.raises(ConfigError, match="TIERGUARD_PAYLOAD_KEYS"):
        Sealer(["not-a-key"])


def test_the_broker_holds_ciphertext_and_a_tampered_job_is_recorded_not_run(stack, simulator, sqlite_url,
                                                                            redis_url):
    key = Fernet.generate_key().decode()
    sim = simulator(categories={"sentiment": {"kind": "label", "labels": ["POSITIVE", "NEGATIVE"],
                                              "agreement": 1.0}})
    settings = stack.configure(
        policy={"defaults": {"sample_rate": 1.0},
                "categories": {"sentiment": {"comparator": {"type": "label",
                                                            "labels": ["POSITIVE", "NEGATIVE"]}}}},
        database_url=sqlite_url, base_url=sim.base_url, payload_keys=key)
    client = tierguard.ShadowedAnthropic(anthropic.Anthropic(max_retries=0))
    request = {"max_tokens": 8, "system": "sentiment: classify",
               "messages": [{"role": "user", "content": "my secret prompt 4711"}]}
    for _ in range(3):
        client.messages.create(category="sentiment", **request)
    assert client.tierguard_flush(10)
    raw = redis.Redis.from_url(redis_url).lrange(settings.queue, 0, -1)
    # What a reader of the broker sees once kombu's base64 body encoding is undone.
    bodies = [base64.b64decode(json.loads(m)["body"]) for m in raw]
    jobs = [job for body in bodies for job in json.loads(body)[0][0]]
    assert len(jobs) == 3 and all(b"4711" not in b and b"secret" not in b for b in bodies)
    assert all(j["sealed"] and j["request"] == {} and j["primary_text"] == "" for j in jobs)
    stack.start_worker(concurrency=4)
    wait_until(lambda: samples(sqlite_url) == 3, 60, "3 samples")
    with session(make_engine(sqlite_url)) as s:
        rows = list(s.exec(select(Sample)))
    assert all(r.agree and r.error is None for r in rows)
    assert {r.request_hash for r in rows} == {digest(request)}  # the real request, once opened
    calls = sum(r["count"] for r in httpx2.get(sim.base_url + "/_sim/stats").json()["requests"])
    # A job whose seal was tampered with: recorded as payload_invalid, never sent to a model.
    forged = seal_job(dataclasses.replace(JOB, job_id="forged"), Sealer([key])).to_dict()
    forged["sealed"] = forged["sealed"][:-8] + "AAAAAAAA"
    app = make_celery(get_settings(redis_url=redis_url))
    app.send_task(BATCH_TASK, args=[[forged]], task_id="forged", queue=settings.queue)
    wait_until(lambda: samples(sqlite_url) == 4, 60, "the forged job recorded")
    with session(make_engine(sqlite_url)) as s:
        bad = s.exec(select(Sample).where(Sample.job_id == "forged")).one()
    assert bad.error == "payload_invalid" and bad.agree is None and "does not open" in bad.reason
    assert sum(r["count"] for r in httpx2.get(sim.base_url + "/_sim/stats").json()["requests"]) == calls
    client.tierguard_close()


def test_a_captured_job_cannot_be_replayed_elsewhere_or_re_aimed():
    """The seal covers the whole job: its readable fields must be what was sealed."""
    s = Sealer([Fernet.generate_key().decode()])
    sealed = seal_job(JOB, s)
    assert open_job(sealed, s) == JOB
    for field, value in (("category", "billing"), ("shadow_model", "attacker-model"),
                         ("served_model", "claude-opus-4-7"), ("job_id", "j2"),
                         ("headers", {"anthropic-beta": "x"})):
        with pytest.raises(PayloadInvalid, match=f"{field} does not match its seal"):
            open_job(dataclasses.replace(sealed, **{field: value}), s)
    old_style = dataclasses.replace(JOB, request={}, primary_text="", sealed=s.seal(
        {"request": JOB.request, "primary_text": JOB.primary_text}))
    with pytest.raises(PayloadInvalid, match="older tierguard"):
        open_job(old_style, s)


def test_signed_jobs_when_sealing_is_off():
    signer = Sealer([], "k" * 40)
    signed = seal_job(JOB, signer)
    assert signed.request == JOB.request and signed.signature  # in clear, signed whole
    assert open_job(signed, signer) == JOB
    travelled = ShadowJob.from_dict(json.loads(json.dumps(signed.to_dict())))  # through the broker
    assert open_job(dataclasses.replace(travelled, deferred_since="2026-01-01T00:00:00"),
                    signer).deferred_since  # set by a worker on the way: outside the signature
    for field, value in (("category", "billing"), ("shadow_model", "attacker-model"),
                         ("request", {"messages": []})):
        with pytest.raises(PayloadInvalid, match="signature does not match"):
            open_job(dataclasses.replace(signed, **{field: value}), signer)
    with pytest.raises(PayloadInvalid, match="unsealed, unsigned"):
        open_job(JOB, signer)
    with pytest.raises(PayloadInvalid, match="signature does not match"):
        open_job(signed, Sealer([], "o" * 40))
    with pytest.raises(ConfigError, match="at least 32"):
        Sealer([], "short")


def test_a_worker_never_calls_a_model_the_policy_does_not_list(engine, simulator, redis_url):
    """Even unsealed (no keys anywhere): a job re-aimed at a model of an attacker's choosing is
    recorded as payload_invalid and nothing is called."""
    from tests.pipeline.test_answers import paid
    from tierguard.pipeline import flow
    from tierguard.pipeline.context import Context
    from tierguard.pipeline.fanout import LoopRunner
    from tierguard.policy import parse_policy

    sim = simulator(categories={"sentiment": {"kind": "label", "labels": ["POSITIVE", "NEGATIVE"]}})
    ctx = Context(policy=parse_policy({"categories": {"sentiment": {}}}), engine=engine,
                  redis=redis.Redis.from_url(redis_url),
                  runner=LoopRunner(lambda: anthropic.AsyncAnthropic(base_url=sim.base_url, api_key="k",
                                                                     max_retries=0)))
    aimed = dataclasses.replace(JOB, shadow_model="attacker-model").to_dict()
    after = flow.run(ctx, [aimed], 1, max_attempts=3, retry_cap=1.0)
    assert after.recorded == 1 and paid(sim) == 0
    with session(engine) as s:
        row = s.exec(select(Sample)).one()
    assert row.error == "payload_invalid" and "attacker-model" in row.reason


def test_odd_signatures_and_foreign_payload_references_are_refused(engine, simulator, redis_url):
    from tests.pipeline.test_answers import paid
    from tierguard.contract import keys
    from tierguard.pipeline import flow
    from tierguard.pipeline.context import Context
    from tierguard.pipeline.fanout import LoopRunner
    from tierguard.policy import parse_policy

    signer = Sealer([], "k" * 40)
    for odd in ("ünïcode", 12345, ["x"]):
        with pytest.raises(PayloadInvalid):
            open_job(dataclasses.replace(seal_job(JOB, signer), signature=odd), signer)
    sim = simulator(categories={"sentiment": {"kind": "label", "labels": ["POSITIVE", "NEGATIVE"]}})
    r = redis.Redis.from_url(redis_url)
    r.set("tierguard:routes-lookalike", "precious")
    ctx = Context(policy=parse_policy({"categories": {"sentiment": {}}}), engine=engine, redis=r,
                  runner=LoopRunner(lambda: anthropic.AsyncAnthropic(base_url=sim.base_url, api_key="k",
                                                                     max_retries=0)))
    forged = dataclasses.replace(JOB, job_id="forged-ref", payload_ref="tierguard:routes-lookalike")
    assert flow.run(ctx, [forged.to_dict()], 1, max_attempts=3, retry_cap=1.0).recorded == 1
    assert r.get("tierguard:routes-lookalike") == b"precious" and paid(sim) == 0  # never read, kept
    with session(engine) as s:
        assert s.exec(select(Sample)).one().error == "payload_invalid"
    assert keys.JOB_PAYLOAD.format(job_id="x") == "tierguard:job:x"


def test_a_signed_job_by_reference_travels_again_signed(redis_url):
    """A large signed job retried or deferred keeps a valid signature beside its reference."""
    from tierguard.contract import job_store
    from tierguard.pipeline.context import Context
    from tierguard.pipeline.flow import travelling

    signer = Sealer([], "k" * 40)
    r = redis.Redis.from_url(redis_url)
    (stored, _), = job_store.stash(r, [seal_job(JOB, signer)], 0, 60)
    assert stored.payload_ref and stored.request == {}
    (loaded,), _ = job_store.load(r, [stored])
    opened = open_job(loaded, signer)
    again = ShadowJob.from_dict(travelling(Context(policy=None, engine=None, sealer=signer), opened))
    assert again.payload_ref and again.request == {} and again.signature
    (reloaded,), _ = job_store.load(r, [again])
    assert open_job(reloaded, signer).request == JOB.request
