"""End to end on real parts: wrapper → Redis → a prefork Celery worker → simulator → PostgreSQL, and
every recorded comparison and the flip in a real Phoenix, read back through its REST API."""

from __future__ import annotations

import anthropic
from sqlmodel import select

import tierguard
from tests.helpers import QUEUES, samples, wait_until
from tierguard.store.db import make_engine, session
from tierguard.store.tables import RouteChange, Sample

CATEGORIES = ("broken", "steady")


def test_a_prefork_worker_exports_every_comparison_and_the_flip(stack, simulator, postgres_url, phoenix,
                                                                project):
    sim = simulator(categories={"broken": {"kind": "label", "labels": QUEUES, "agreement": 0.0},
                                "steady": {"kind": "label", "labels": QUEUES, "agreement": 1.0}})
    stack.configure(policy={"defaults": {"sample_rate": 1.0, "min_samples": 20},
                            "categories": {c: {"comparator": {"type": "label", "labels": QUEUES}}
                                           for c in CATEGORIES}},
                    database_url=postgres_url, base_url=sim.base_url,
                    otlp_endpoint=phoenix.url, otlp_service_name=project)
    stack.start_worker(concurrency=2, pool="prefork")
    client = tierguard.ShadowedAnthropic(anthropic.Anthropic(max_retries=0))
    for i in range(80):
        category = CATEGORIES[i % 2]
        client.messages.create(category=category, max_tokens=8, system=f"{category}: route",
                               messages=[{"role": "user", "content": f"ticket {i}"}])
    assert client.tierguard_flush(10)
    wait_until(lambda: samples(postgres_url) == 80, 90, "80 samples")
    stack.stop_workers()  # a warm shutdown: what the pool's children still queue is flushed
    # the pool's children tuned their garbage collector too (inherited), and froze start-up as they began
    assert stack.logs()[0].count("garbage collector: thresholds (50000, 10, 10)") >= 3
    client.tierguard_close()

    with session(make_engine(postgres_url)) as s:
        rows = {r.job_id: r for r in s.exec(select(Sample))}
        [change] = s.exec(select(RouteChange)).all()
    spans = phoenix.wait_spans(project, 81)
    comparisons = {s["attributes"]["tierguard.job_id"]: s for s in spans if s["name"].startswith("chat ")}
    assert set(comparisons) == set(rows) and len(spans) == 81
    labels = set()
    for job_id, row in rows.items():
        span = comparisons[job_id]
        [event] = span["events"]
        evaluation = event["attributes"]
        assert (span["attributes"]["tierguard.category"], span["attributes"]["gen_ai.request.model"],
                span["attributes"]["tierguard.served_model"]) == (row.category, row.shadow_model,
                                                                   row.served_model)
        assert evaluation["gen_ai.evaluation.score.label"] == ("agree" if row.agree else "disagree")
        assert evaluation["gen_ai.evaluation.score.value"] == row.score
        assert evaluation["gen_ai.evaluation.explanation"] == row.reason
        labels.add((row.category, evaluation["gen_ai.evaluation.score.label"]))
    assert labels == {("broken", "disagree"), ("steady", "agree")}
    [flip] = [s for s in spans if s["name"] == "tierguard.route_change"]
    assert flip["events"][0]["attributes"] == {
        "tierguard.category": "broken", "tierguard.route.from": change.from_model,
        "tierguard.route.to": change.to_model, "tierguard.route.rule": change.rule,
        "tierguard.route.reason": change.reason}
    assert (change.from_model, change.to_model) == ("claude-haiku-4-5", "claude-opus-4-7")
