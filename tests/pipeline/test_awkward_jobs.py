"""One message of awkward jobs: each ends as its own row, and each shadow is the request sent."""

import base64
import dataclasses
import json
import uuid

import httpx2
import redis
from sqlmodel import select

from tests.helpers import POLICY, SCENARIO, wait_until
from tierguard.contract import keys
from tierguard.contract.broker import BATCH_TASK, make_celery
from tierguard.contract.job import ShadowJob
from tierguard.store.db import make_engine, session
from tierguard.store.tables import Sample

MESSAGES = [{"role": "user", "content": "sentiment: the parcel arrived"}]
BETA = "context-management-2025-06-27"


def job(name: str, request: dict, **fields) -> ShadowJob:
    return ShadowJob(job_id=f"{name}-{uuid.uuid4().hex[:8]}", category="sentiment",
                     served_model="claude-haiku-4-5", shadow_model="claude-opus-4-7",
                     request=request, primary_text="POSITIVE", requested_at="2026-12-01T00:00:00+00:00",
                     **fields)


def own_ref(j: ShadowJob) -> ShadowJob:
    """``j`` sent by reference to its own payload key (what the publisher's store names)."""
    return dataclasses.replace(j, payload_ref=keys.JOB_PAYLOAD.format(job_id=j.job_id))


def test_every_awkward_job_is_one_row_and_the_same_request(stack, simulator, sqlite_url, redis_url):
    sim = simulator(**SCENARIO)
    settings = stack.configure(policy=POLICY, database_url=sqlite_url, base_url=sim.base_url)
    image = base64.b64encode(b"\x89PNG" + b"\0" * 300_000).decode()
    big = {"max_tokens": 8, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": image}},
        {"type": "text", "text": "sentiment: this"}]}]}
    r = redis.Redis.from_url(redis_url)
    stored = own_ref(job("stored", {}))
    r.set(stored.payload_ref, json.dumps({"request": big, "primary_text": "POSITIVE", "sealed": None}))
    jobs = [job("plain", {"max_tokens": 8, "messages": MESSAGES}),
            job("temperature", {"max_tokens": 8, "messages": MESSAGES, "temperature": 0.2}),
            job("top-k", {"max_tokens": 8, "messages": MESSAGES, "top_k": 5, "top_p": 0.9}),
            job("beta", {"max_tokens": 8, "messages": MESSAGES, "context_management": {"edits": []}},
                headers={"anthropic-beta": BETA}),
            job("beta-without-header", {"max_tokens": 8, "messages": MESSAGES,
                                        "context_management": {"edits": []}}),
            job("no-max-tokens", {"messages": MESSAGES}),
            own_ref(job("expired", {})),  # its payload never stored, or already expired
            stored]
    make_celery(settings).send_task(BATCH_TASK, args=[[j.to_dict() for j in jobs]], queue=settings.queue)
    stack.start_worker(concurrency=4)
    engine = make_engine(sqlite_url)

    def rows() -> dict[str, Sample]:
        with session(engine) as s:
            return {row.job_id.rsplit("-", 1)[0]: row for row in s.exec(select(Sample))}

    wait_until(lambda: len(rows()) == len(jobs), 60, "one row per job")
    found = rows()
    assert len(found) == len(jobs)
    for name in ("plain", "temperature", "top-k", "beta", "stored"):
        assert found[name].error is None and found[name].agree is not None, (name, found[name].error)
    assert found["beta-without-header"].error.startswith("http_400")  # as the API would answer it
    assert found["no-max-tokens"].error.startswith("bad_request")
    assert found["expired"].error.startswith("payload_expired")
    # deleted once recorded (by the same worker, right after the recording's commit)
    wait_until(lambda: r.get(stored.payload_ref) is None, 10, "the stored payload deleted")
    sent = httpx2.get(sim.base_url + "/_sim/requests").json()["requests"]
    bodies = {json.dumps(json.loads(x["body"])["messages"]) + str(sorted(json.loads(x["body"]))): x
              for x in sent}
    shadows = [json.loads(x["body"]) for x in bodies.values()]
    assert {"max_tokens": 8, "messages": MESSAGES, "temperature": 0.2, "model": "claude-opus-4-7"} in shadows
    assert {"max_tokens": 8, "messages": MESSAGES, "top_k": 5, "top_p": 0.9,
            "model": "claude-opus-4-7"} in shadows
    beta = [x for x in sent if "context_management" in x["body"]]
    assert {x["headers"].get("anthropic-beta") for x in beta} == {BETA, None}
