"""Staged rollouts on real parts (the SDK wrapper, a real worker and beat, Redis, the simulator): the
calls split as the weights say, steps that advance on a good rung, survive the worker and beat
killed -9, and end with the new route; a bad rung rolled back at its first step, audited and paged,
every call answered."""

import os
import signal
import time

import anthropic
import httpx2
from sqlmodel import select

import tierguard
from tests.helpers import last_json, samples, tg, wait_until
from tierguard.store.db import make_engine, session
from tierguard.store.tables import Category, Event, RouteChange

HAIKU, OPUS = "claude-haiku-4-5", "claude-opus-4-7"
LABELS = ["POSITIVE", "NEGATIVE", "NEUTRAL"]


def setup(stack, simulator, url, agreement):
    sim = simulator(categories={"sentiment": {"kind": "label", "labels": LABELS, "agreement": agreement}})
    stack.configure(policy={"defaults": {"sample_rate": 1.0, "min_samples": 20, "start_on": "reference"},
                            "categories": {"sentiment": {"comparator": {"type": "label", "labels": LABELS}}}},
                    database_url=url, base_url=sim.base_url, monitor_seconds=1)
    return sim


def calls(client, n, start=0):
    """The models that answered ``n`` calls (every call answered)."""
    return [client.messages.create(category="sentiment", system="sentiment: classify", max_tokens=8,
                                   messages=[{"role": "user", "content": f"review {start + i}"}]).model
            for i in range(n)]


def status(stack, tmp_path):
    """The rollout as `tierguard rollout status --json` shows it (read in this process: faster)."""
    from tierguard.ops.rollouts import status as read
    from tierguard.policy import load_policy

    return read(make_engine(stack.env["TIERGUARD_DATABASE_URL"]),
                load_policy(stack.env["TIERGUARD_POLICY"]), "sentiment")["rollouts"]["sentiment"]


def traffic_until(client, stack, tmp_path, n, seconds=90):
    """Calls, 20 at a time, until the rollout stops running (or ``seconds``); the calls made."""
    deadline = time.monotonic() + seconds
    while status(stack, tmp_path)["status"] == "running" and time.monotonic() < deadline:
        calls(client, 20, n)
        client.tierguard_flush(5)
        n += 20
        time.sleep(0.2)
    return n


def test_a_good_rung_is_rolled_out_step_by_step_across_restarts(stack, simulator, postgres_url, tmp_path):
    setup(stack, simulator, postgres_url, 1.0)
    worker, beat = stack.start_worker(concurrency=4), stack.start_beat()
    env = stack.env_for_cli()
    started = last_json(tg("rollout", "sentiment", HAIKU, "--steps", "20,100", "--step-minutes", "0",
                           "--step-samples", "60", "--json", env=env, cwd=tmp_path).stdout)
    found = started["rollouts"]["sentiment"]
    assert {k: found[k] for k in ("status", "step", "weight", "base", "model", "steps")} == {
        "status": "running", "step": 1, "weight": 0.2, "base": OPUS, "model": HAIKU, "steps": [20, 100]}
    client = tierguard.ShadowedAnthropic(anthropic.Anthropic(max_retries=0))
    try:
        first = calls(client, 150)  # under 60 Haiku comparisons: still the first step
        assert 0.1 <= first.count(HAIKU) / 150 <= 0.3 and set(first) == {HAIKU, OPUS}
        client.tierguard_flush(10)
        wait_until(lambda: samples(postgres_url, "shadow") == 150, 60, "150 samples")
        assert status(stack, tmp_path)["samples"] == first.count(HAIKU)
        for proc in (worker, beat):  # killed mid-rollout: its state is in the database
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        stack.start_worker(concurrency=4)
        stack.start_beat()
        traffic_until(client, stack, tmp_path, 150)
        assert status(stack, tmp_path)["status"] == "done"
    finally:
        client.tierguard_close()
    with session(make_engine(postgres_url)) as s:
        row = s.get(Category, "sentiment")
        changes = list(s.exec(select(RouteChange)))
        kinds = [e.kind for e in s.exec(select(Event).order_by(Event.id))]
    assert row.routed_model == HAIKU and [(c.rule, c.from_model, c.to_model) for c in changes] == [
        ("rollout", OPUS, HAIKU)]
    assert kinds.count("rollout") == 3 and "promoted" in kinds  # started, the step, done
    told = last_json(tg("history", "sentiment", "--json", env=env, cwd=tmp_path).stdout)["rollouts"]
    assert [r["summary"].split(": ")[1] for r in told] == [
        f"rollout of {HAIKU} done", f"rollout of {HAIKU} running", f"rollout of {HAIKU} running"]
    shown = last_json(tg("status", "--json", env=env, cwd=tmp_path).stdout)["categories"]["sentiment"]
    assert shown["route"] == HAIKU and shown["rollout"]["status"] == "done"


def test_a_bad_rung_is_rolled_back_at_its_first_step(stack, simulator, sqlite_url, tmp_path):
    setup(stack, simulator, sqlite_url, 0.3)
    stack.start_worker(concurrency=4)
    stack.start_beat()
    tg("rollout", "sentiment", HAIKU, "--step-minutes", "0", "--step-samples", "1000",
       env=stack.env_for_cli(), cwd=tmp_path)
    client = tierguard.ShadowedAnthropic(anthropic.Anthropic(max_retries=0))
    try:
        n = traffic_until(client, stack, tmp_path, 0)
        found = status(stack, tmp_path)
        assert found["status"] == "rolled_back" and found["step"] == 1
        wait_until(lambda: set(calls(client, 20, n)) == {OPUS}, 10, "every call back on Opus")
    finally:
        client.tierguard_close()
    with session(make_engine(sqlite_url)) as s:
        [change] = list(s.exec(select(RouteChange)))
        events = [e.kind for e in s.exec(select(Event))]
        assert s.get(Category, "sentiment").routed_model == OPUS
    assert (change.rule, change.from_model, change.to_model) == ("rollout", HAIKU, OPUS)
    assert "rolled back to claude-opus-4-7 at step 1 (5 %)" in change.reason and "demoted" in events
    done = tg("rollout", "resume", "sentiment", env=stack.env_for_cli(), cwd=tmp_path, check=False)
    assert done.returncode == 2 and "its last rollout is rolled_back; nothing to resume" in done.stderr


def test_a_rollout_whose_new_model_breaks_answers_is_rolled_back_by_the_escalation_watch(
        stack, simulator, sqlite_url, redis_url, tmp_path):
    import datetime as dt

    import redis

    from tierguard.pipeline.escalations import watch
    from tierguard.policy import load_policy
    from tierguard.store.db import utcnow
    from tierguard.store.traffic import fold

    new = "claude-haiku-5"  # a challenger, off the ladder: its answers are checked all the same
    broken = {new: {"broken": {"rate": 0.5, "kinds": ["invalid"]}}}
    sim = simulator(categories={"sentiment": {"kind": "label", "labels": LABELS, "agreement": 1.0,
                                              "models": broken}})
    stack.configure(policy={"defaults": {"sample_rate": 0.0}, "pricing": {
        HAIKU: {"input": 1.0, "output": 5.0}, OPUS: {"input": 5.0, "output": 25.0},
        new: {"input": 0.5, "output": 2.5}}, "categories": {"sentiment": {
            "comparator": {"type": "label", "labels": LABELS}, "escalate_on": ["invalid"]}}},
        database_url=sqlite_url, base_url=sim.base_url)
    tg("rollout", "sentiment", new, "--steps", "50,100", env=stack.env_for_cli(), cwd=tmp_path)
    client = tierguard.ShadowedAnthropic(anthropic.Anthropic(max_retries=0))
    try:
        time.sleep(0.5)  # the route refresh reads the split
        served = calls(client, 200)
        stats = client.tierguard_stats()
    finally:
        client.tierguard_close()
    assert set(served) <= {HAIKU, new, OPUS} and stats["escalated_invalid"] >= 20  # caught, escalated
    engine, policy = make_engine(sqlite_url), load_policy(stack.env["TIERGUARD_POLICY"])
    fold(engine, redis.Redis.from_url(redis_url), utcnow() + dt.timedelta(minutes=3), policy)
    [change] = watch(engine, redis.Redis.from_url(redis_url), policy)
    assert (change.rule, change.from_model, change.to_model) == ("rollout", new, HAIKU)
    assert "its answers fail their checks: escalation CUSUM" in change.reason
    assert status(stack, tmp_path)["status"] == "rolled_back"


def test_the_gateway_splits_calls_as_the_weights_say(stack, simulator, sqlite_url, tmp_path):
    import redis

    from tests.helpers import API_KEY

    setup(stack, simulator, sqlite_url, 1.0)
    env = stack.env_for_cli()
    refused = tg("rollout", "sentiment", OPUS, env=env, cwd=tmp_path, check=False)
    assert refused.returncode == 2 and "is sentiment's reference" in refused.stderr
    tg("rollout", "sentiment", HAIKU, "--steps", "30,100", env=env, cwd=tmp_path)
    base = stack.start_gateway()
    client = anthropic.Anthropic(base_url=base, api_key=API_KEY, max_retries=0,
                                 default_headers={"x-tierguard-category": "sentiment"})
    served = [client.messages.create(model=OPUS, system="sentiment: classify", max_tokens=8,
                                     messages=[{"role": "user", "content": f"review {i}"}]).model
              for i in range(300)]
    assert 0.2 <= served.count(HAIKU) / 300 <= 0.4 and set(served) == {HAIKU, OPUS}  # 30 % ± 3.8 σ
    r = redis.Redis.from_url(stack.env["TIERGUARD_REDIS_URL"])
    r.hset("tierguard:splits", "sentiment", f"{OPUS}|claude-forged-1|1")  # a model the policy does not know
    time.sleep(0.6)  # the gateway's route refresh reads it
    forged = [client.messages.create(model=OPUS, system="sentiment: classify", max_tokens=8,
                                     messages=[{"role": "user", "content": "x"}]).model for _ in range(5)]
    assert set(forged) == {OPUS} and httpx2.get(base + "/tierguard/stats").json()["split_refused"] == 5


def test_a_live_rollout_to_a_retired_model_is_aborted(stack, simulator, sqlite_url, tmp_path):
    import datetime as dt

    from tierguard.pipeline.rollouts import abort_retired
    from tierguard.policy import load_policy

    setup(stack, simulator, sqlite_url, 1.0)
    tg("rollout", "sentiment", HAIKU, env=stack.env_for_cli(), cwd=tmp_path)
    policy = load_policy(stack.env["TIERGUARD_POLICY"]).model_copy(
        update={"retirements": {HAIKU: dt.date.today() - dt.timedelta(days=1)}})
    assert abort_retired(make_engine(sqlite_url), None, policy, dt.date.today()) == 1
    assert status(stack, tmp_path)["status"] == "aborted"
    assert status(stack, tmp_path)["reason"].startswith(f"aborted: {HAIKU} retired on")
