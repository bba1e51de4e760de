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
    assert sealed_old.request == {} and sealed_old.primary_text == "" and "hi" not in sealed_old.sealed
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
    assert seal_job(JOB, None) == JOB and open_job(JOB, rotated) == JOB  # no key: plain, as before
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
