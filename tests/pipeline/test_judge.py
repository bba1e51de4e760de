"""The judge on real parts: a worker process asks the simulator's judge after each shadow call."""

import anthropic
import httpx2
from sqlmodel import select

import tierguard
from tests.helpers import samples, wait_until
from tierguard.store.db import make_engine, session
from tierguard.store.tables import Category, RouteChange, Sample

JUDGE = {"type": "judge", "criteria": "Same facts as the reference, in any words."}


def ask(client, category, i):
    return client.messages.create(category=category, max_tokens=64, system=f"{category}: write it",
                                  messages=[{"role": "user", "content": f"{category} request {i}"}])


def test_the_judge_flips_a_drifting_free_text_category_but_not_one_that_only_rewords(
        stack, simulator, postgres_url):
    sim = simulator(categories={
        "summaries": {"kind": "text", "agreement": 0.99, "paraphrase": 0.5,
                      "drift": {"after": 150, "agreement": 0.5}},
        "rewrites": {"kind": "text", "agreement": 1.0, "paraphrase": 1.0}})
    stack.configure(policy={"defaults": {"sample_rate": 1.0, "min_samples": 50},
                            "pricing": {"claude-haiku-4-5": {"input": 1.0, "output": 5.0},
                                        "claude-opus-4-7": {"input": 5.0, "output": 25.0}},
                            "categories": {"summaries": {"comparator": JUDGE},
                                           "rewrites": {"comparator": JUDGE}}},
                    database_url=postgres_url, base_url=sim.base_url)
    stack.start_worker(concurrency=16)
    client = tierguard.ShadowedAnthropic(anthropic.Anthropic(max_retries=0))
    for i in range(400):
        ask(client, "summaries", i)
        ask(client, "rewrites", i)
        if i % 100 == 99:
            client.tierguard_flush(10)
            wait_until(lambda i=i: samples(postgres_url) >= 2 * i - 150, 90, "the worker to catch up")
    assert client.tierguard_flush(30)
    wait_until(lambda: samples(postgres_url) == 800, 120, "800 samples")
    with session(make_engine(postgres_url)) as s:
        changes = list(s.exec(select(RouteChange)))
        rows = list(s.exec(select(Sample)))
        routes = {c.name: c.routed_model for c in s.exec(select(Category))}
    assert [(c.category, c.to_model) for c in changes] == [("summaries", "claude-opus-4-7")]
    assert routes["rewrites"] == "claude-haiku-4-5"
    rewrites = [r for r in rows if r.category == "rewrites"]
    assert all(r.agree for r in rewrites)  # reworded answers are equivalent to the judge
    assert sum(r.primary_hash != r.shadow_hash for r in rewrites) > 100  # … though they differ
    assert all(r.error is None and r.judge_model == "claude-opus-4-7" for r in rows)
    assert all(r.judge_cost_usd == (r.judge_input_tokens * 5.0 + r.judge_output_tokens * 25.0) / 1e6
               and r.judge_cost_usd > 0 for r in rows)
    orders = {r.detail["judge"][0]["order"] for r in rows}
    assert orders == {"reference_first", "candidate_first"}
    worse = [r for r in rows if not r.agree]
    assert worse and all(r.reason.startswith("judge: candidate_worse:") for r in worse)


def test_a_broken_or_absent_judge_gives_errors_never_disagreements(stack, simulator, sqlite_url):
    sim = simulator(judge_malformed=0.2, categories={"notes": {"kind": "text", "agreement": 1.0}})
    stack.configure(policy={"defaults": {"sample_rate": 1.0, "min_samples": 10},
                            "categories": {"notes": {"comparator": {**JUDGE, "swap": True}}}},
                    database_url=sqlite_url, base_url=sim.base_url)
    # The judge is down: its next 60 calls answer 529 — 20 jobs × 3 attempts each.
    httpx2.post(sim.base_url + "/_sim/fail", json={"status": 529, "count": 60, "retry_after": 0,
                                                   "judge": True})
    stack.start_worker(concurrency=4)
    client = tierguard.ShadowedAnthropic(anthropic.Anthropic(max_retries=0))
    for i in range(20):
        ask(client, "notes", i)
    assert client.tierguard_flush(10)
    wait_until(lambda: samples(sqlite_url) == 20, 90, "20 samples")
    for i in range(20, 60):  # the judge is back, answering badly one time in five
        ask(client, "notes", i)
    assert client.tierguard_flush(10)
    wait_until(lambda: samples(sqlite_url) == 60, 90, "60 samples")
    with session(make_engine(sqlite_url)) as s:
        rows = list(s.exec(select(Sample)))
        changes = list(s.exec(select(RouteChange)))
    errors = [r for r in rows if r.error]
    assert changes == []
    assert errors and {r.error for r in errors} == {"judge_error"}
    assert all(r.agree is None for r in errors)
    reasons = [r.reason for r in errors]
    assert all(r.startswith("judge claude-opus-4-7: ") for r in reasons), reasons[:3]
    assert any("answered 529" in r for r in reasons), reasons[:3]
    assert any("did not call tierguard_verdict" in r for r in reasons), reasons[:3]
    judged = [r for r in rows if not r.error]
    assert judged and all(r.agree for r in judged)
    # Swap mode: both orders asked, on every judged sample.
    assert all([j["order"] for j in r.detail["judge"]] in (["reference_first", "candidate_first"],
                                                           ["candidate_first", "reference_first"])
               for r in judged)
