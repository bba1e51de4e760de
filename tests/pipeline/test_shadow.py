"""One shadow job without Celery: the real SDK against the simulator, real storage."""

import uuid

import anthropic
from sqlmodel import select

from tests.helpers import API_KEY
from tierguard.db import Sample, session
from tierguard.job import ShadowJob
from tierguard.ops.status import category_status
from tierguard.pipeline.shadow import Context, run_job
from tierguard.policy import parse_policy

LABELS = ["RED", "GREEN", "BLUE", "AMBER"]


def make_job(i, category="labels"):
    return ShadowJob(job_id=uuid.uuid4().hex, category=category, served_model="claude-haiku-4-5",
                     shadow_model="claude-opus-4-7",
                     request={"max_tokens": 8, "system": f"{category}: pick",
                              "messages": [{"role": "user", "content": f"item {i}"}]},
                     primary_text="RED")


def test_noise_floor_measures_reference_self_agreement_and_warns(engine, simulator):
    sim = simulator(categories={"labels": {"kind": "label", "labels": LABELS,
                                           "reference_noise": 0.15}}, seed=5)
    policy = parse_policy({"categories": {"labels": {
        "comparator": {"type": "label", "labels": LABELS}, "noise_floor_rate": 1.0}}})
    ctx = Context(policy=policy, engine=engine, client=anthropic.Anthropic(
        base_url=sim.base_url, api_key=API_KEY, max_retries=0))
    for i in range(120):
        run_job(ctx, make_job(i))
    with session(engine) as s:
        kinds = [x.kind for x in s.exec(select(Sample))]
    assert kinds.count("noise") == 120 and kinds.count("shadow") == 120
    status = category_status(engine, policy)["labels"]
    assert status["samples"] == 120  # noise samples are not shadow samples
    assert 0.6 < status["self_agreement"] < 0.85
    assert "measures noise, not quality" in status["warnings"][0]


def test_unparseable_output_is_a_recorded_disagreement(engine, simulator):
    sim = simulator(categories={"labels": {"kind": "text"}})
    policy = parse_policy({"categories": {"labels": {
        "comparator": {"type": "label", "labels": LABELS}}}})
    ctx = Context(policy=policy, engine=engine, client=anthropic.Anthropic(
        base_url=sim.base_url, api_key=API_KEY, max_retries=0))
    outcome = run_job(ctx, make_job(1))
    assert outcome.status == "recorded"
    with session(engine) as s:
        row = s.exec(select(Sample)).one()
    assert row.agree is False and row.error is None
    assert row.reason == "unparseable: shadow answer has no allowed label"
