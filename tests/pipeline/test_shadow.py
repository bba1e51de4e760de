"""The worker's flow without Celery: the real async SDK against the simulator, real storage."""

import uuid

import anthropic
from sqlmodel import select

from tests.helpers import API_KEY
from tierguard.contract.job import ShadowJob
from tierguard.ops.status import category_status
from tierguard.pipeline import flow
from tierguard.pipeline.context import Context
from tierguard.pipeline.fanout import LoopRunner
from tierguard.policy import parse_policy
from tierguard.store.db import session
from tierguard.store.tables import Sample

LABELS = ["RED", "GREEN", "BLUE", "AMBER"]


def context(policy, engine, sim, redis_url):
    import redis

    runner = LoopRunner(lambda: anthropic.AsyncAnthropic(base_url=sim.base_url, api_key=API_KEY,
                                                         max_retries=0))
    return Context(policy=policy, engine=engine, redis=redis.Redis.from_url(redis_url), runner=runner)


def run_job(ctx, job):
    return flow.run(ctx, [job.to_dict()], 1, max_attempts=1, retry_cap=1.0)


def make_job(i, category="labels"):
    return ShadowJob(job_id=uuid.uuid4().hex, category=category, served_model="claude-haiku-4-5",
                     shadow_model="claude-opus-4-7",
                     request={"max_tokens": 8, "system": f"{category}: pick",
                              "messages": [{"role": "user", "content": f"item {i}"}]},
                     primary_text="RED")


def test_noise_floor_measures_reference_self_agreement_and_warns(engine, simulator, redis_url):
    sim = simulator(categories={"labels": {"kind": "label", "labels": LABELS,
                                           "reference_noise": 0.15}}, seed=5)
    policy = parse_policy({"categories": {"labels": {
        "comparator": {"type": "label", "labels": LABELS}, "noise_floor_rate": 1.0}}})
    ctx = context(policy, engine, sim, redis_url)
    for i in range(120):
        run_job(ctx, make_job(i))
    with session(engine) as s:
        kinds = [x.kind for x in s.exec(select(Sample))]
    assert kinds.count("noise") == 120 and kinds.count("shadow") == 120
    status = category_status(engine, policy)["labels"]
    assert status["samples"] == 120  # noise samples are not shadow samples
    assert 0.6 < status["self_agreement"] < 0.85
    assert "measures noise, not quality" in status["warnings"][0]


def test_unparseable_output_is_a_recorded_disagreement(engine, simulator, redis_url):
    sim = simulator(categories={"labels": {"kind": "text"}})
    policy = parse_policy({"categories": {"labels": {
        "comparator": {"type": "label", "labels": LABELS}}}})
    ctx = context(policy, engine, sim, redis_url)
    after = run_job(ctx, make_job(1))
    assert after.recorded == 1 and after.again == []
    with session(engine) as s:
        row = s.exec(select(Sample)).one()
    assert row.agree is False and row.error is None
    assert row.reason == "unparseable: shadow answer has no allowed label"
