"""Challengers on real parts: the SDK wrapper's sampled jobs through a real worker against the
simulator, which answers for a model it was told about (its own quality per category); a
challenger good in one category and bad in another ends equivalent/eligible and worse; operators
start, narrow and stop challengers from the command line; a policy without any asks none."""

import datetime as dt
import json

import anthropic
import httpx2
import redis
from sqlmodel import select

import tierguard
from tests.helpers import last_json, samples, tg, wait_until
from tierguard.store.db import make_engine, session, utcnow
from tierguard.store.tables import ChallengerState, Sample
from tierguard.store.traffic import fold

HAIKU, OPUS, NEW = "claude-haiku-4-5", "claude-opus-4-7", "claude-haiku-5"
LABELS = ["POSITIVE", "NEGATIVE", "NEUTRAL"]
SCENARIO = {"categories": {
    "sentiment": {"kind": "label", "labels": LABELS, "agreement": 1.0, "models": {NEW: {"agreement": 1.0}}},
    "tickets": {"kind": "label", "labels": LABELS, "agreement": 1.0, "models": {NEW: {"agreement": 0.3}}}}}
PRICING = {HAIKU: {"input": 1.0, "output": 5.0}, OPUS: {"input": 5.0, "output": 25.0},
           NEW: {"input": 0.5, "output": 2.5}}


def policy(**top):
    cat = {"comparator": {"type": "label", "labels": LABELS}}
    return {"defaults": {"sample_rate": 1.0, "min_samples": 30, "promote_threshold": 0.9,
                         "promote_min_samples": 50},
            "pricing": PRICING, "categories": {"sentiment": cat, "tickets": cat}, **top}


def traffic(n):
    client = tierguard.ShadowedAnthropic(anthropic.Anthropic(max_retries=0))
    try:
        for i in range(n):
            for name in ("sentiment", "tickets"):
                client.messages.create(category=name, system=f"{name}: classify", max_tokens=8,
                                       messages=[{"role": "user", "content": f"{name} message {i}"}])
        client.tierguard_flush(10)
    finally:
        client.tierguard_close()


def test_a_challenger_good_in_one_category_and_bad_in_another(stack, simulator, postgres_url, redis_url,
                                                              tmp_path):
    url = postgres_url  # PostgreSQL here (row locks, upserts); the other tests run on SQLite
    sim = simulator(**SCENARIO)
    stack.configure(policy=policy(challengers=[NEW], challenge_rate=1.0), database_url=url,
                    base_url=sim.base_url)
    stack.start_worker(concurrency=8)
    traffic(120)
    wait_until(lambda: samples(url, "shadow") == 240, 90, "240 shadow samples")
    with session(make_engine(url)) as s:
        twins = list(s.exec(select(Sample).where(Sample.kind == "challenger")))
        states = {st.category: st.state for st in s.exec(select(ChallengerState))}
    # Each job: the challenger against the reference's answer and against Haiku's (in service).
    assert len(twins) == 480
    assert {(t.served_model, t.shadow_model) for t in twins} == {(OPUS, NEW), (HAIKU, NEW)}
    assert all(t.shadow_cost_usd is None for t in twins if t.served_model == HAIKU)  # one call, priced once
    assert states["sentiment"]["n"] == states["tickets"]["n"] == 120
    fold(make_engine(url), redis.Redis.from_url(redis_url), utcnow() + dt.timedelta(minutes=3))
    out = last_json(tg("challenge", "status", "--json", env=stack.env_for_cli(), cwd=tmp_path).stdout)
    good, bad = out["challengers"][NEW]["sentiment"], out["challengers"][NEW]["tickets"]
    assert (good["verdict"], good["eligible"], good["agreement_with_reference"]) == ("equivalent", True, 1.0)
    assert good["agreement_with_serving"] == 1.0 and good["samples"] == 120 and good["saving_usd_month"] > 0
    assert bad["verdict"] == "worse" and not bad["eligible"] and bad["agreement_with_reference"] < 0.5
    assert "below threshold 0.90" in bad["reason"]
    assert out["recommendations"]["sentiment"]["model"] == NEW
    assert out["recommendations"]["tickets"] == {**out["recommendations"]["tickets"], "model": HAIKU,
                                                  "saving_usd_month": 0.0}
    env = stack.env_for_cli()
    status = last_json(tg("status", "--json", env=env, cwd=tmp_path).stdout)
    assert status["categories"]["sentiment"]["challengers"][NEW]["verdict"] == "equivalent"
    found = {c["category"]: c for c in last_json(tg("opportunities", "--json", env=env,
                                                    cwd=tmp_path).stdout)["categories"]}
    assert found["tickets"]["challengers"][NEW]["verdict"] == "worse"
    assert found["sentiment"]["recommendation"]["model"] == NEW
    report = last_json(tg("report", "--out", str(tmp_path / "r.png"), "--json", env=env, cwd=tmp_path).stdout)
    assert report["challengers"] == {"sentiment": {NEW: "equivalent"}, "tickets": {NEW: "worse"}}


def test_operators_start_narrow_and_stop_challengers(stack, simulator, sqlite_url, tmp_path):
    sim = simulator(**SCENARIO)
    stack.configure(policy=policy(), database_url=sqlite_url, base_url=sim.base_url)
    env = stack.env_for_cli()
    done = tg("challenge", "claude-unpriced-1", env=env, cwd=tmp_path, check=False)
    assert done.returncode == 2 and "model: claude-unpriced-1 has no price" in done.stderr
    done = tg("challenge", NEW, "--rate", "1.5", env=env, cwd=tmp_path, check=False)
    assert done.returncode == 2 and "--rate: 1.5 must be above 0 and at most 1" in done.stderr
    started = last_json(tg("challenge", NEW, "--categories", "tickets", "--rate", "1", "--json", env=env,
                           cwd=tmp_path).stdout)
    assert started == {"model": NEW, "categories": ["tickets"], "rate": 1.0, "stopped": False}
    stack.start_worker(concurrency=4)
    traffic(20)
    wait_until(lambda: samples(sqlite_url, "shadow") == 40, 60, "40 shadow samples")
    with session(make_engine(sqlite_url)) as s:
        asked = {t.category for t in s.exec(select(Sample).where(Sample.kind == "challenger"))}
    assert asked == {"tickets"}  # only the category named
    tg("challenge", "stop", NEW, env=env, cwd=tmp_path)
    status = last_json(tg("challenge", "status", "--json", env=env, cwd=tmp_path).stdout)
    assert status["challengers"][NEW]["tickets"]["active"] is False


def test_a_policy_without_challengers_asks_none(stack, simulator, sqlite_url):
    sim = simulator(**SCENARIO)
    stack.configure(policy=policy(), database_url=sqlite_url, base_url=sim.base_url)
    stack.start_worker(concurrency=4)
    traffic(10)
    wait_until(lambda: samples(sqlite_url, "shadow") == 20, 60, "20 shadow samples")
    assert samples(sqlite_url) == 20
    assert NEW not in {json.loads(r["body"]).get("model")
                       for r in httpx2.get(sim.base_url + "/_sim/requests").json()["requests"]}


def test_with_auto_rollout_an_eligible_cheaper_challenger_is_rolled_out_by_itself(stack, simulator,
                                                                                sqlite_url, tmp_path):
    sim = simulator(**SCENARIO)
    pol = policy(challengers=[NEW], challenge_rate=1.0)
    pol["defaults"]["auto_rollout"] = True
    stack.configure(policy=pol, database_url=sqlite_url, base_url=sim.base_url)
    stack.start_worker(concurrency=8)
    traffic(110)  # eligible at its 92nd comparison with the reference (the promotion rule)
    wait_until(lambda: samples(sqlite_url, "shadow") == 220, 90, "220 shadow samples")
    found = last_json(tg("rollout", "status", "--json", env=stack.env_for_cli(), cwd=tmp_path).stdout)
    assert set(found["rollouts"]) == {"sentiment"}  # tickets: worse, never rolled out
    rollout = found["rollouts"]["sentiment"]
    assert {k: rollout[k] for k in ("model", "base", "status", "step", "steps", "started_by")} == {
        "model": NEW, "base": HAIKU, "status": "running", "step": 1, "steps": [5, 25, 50, 100],
        "started_by": "auto_rollout"}
    client = tierguard.ShadowedAnthropic(anthropic.Anthropic(max_retries=0))
    try:  # 5 % of sentiment's calls now go to the challenger, a model off its ladder
        served = [client.messages.create(category="sentiment", system="sentiment: classify", max_tokens=8,
                                         messages=[{"role": "user", "content": f"more {i}"}]).model
                  for i in range(400)]
    finally:
        client.tierguard_close()
    assert 5 <= served.count(NEW) <= 40 and set(served) == {HAIKU, NEW}
    wait_until(lambda: status_samples(tmp_path, stack) == served.count(NEW), 60,
               "the challenger's calls compared with the reference for the rollout")


def status_samples(tmp_path, stack):
    from tierguard.ops.rollouts import status
    from tierguard.policy import load_policy

    return status(make_engine(stack.env["TIERGUARD_DATABASE_URL"]),
                  load_policy(stack.env["TIERGUARD_POLICY"]), "sentiment")["rollouts"]["sentiment"]["samples"]
