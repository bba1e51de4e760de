"""Batch shadows: jobs collected in the database, sent through the Message Batches API, recorded once."""

import dataclasses
import os
import signal
import time
from collections import Counter

import anthropic
import httpx2
import sqlalchemy as sa
from sqlmodel import select

import tierguard
from tests.helpers import API_KEY, last_json, samples, tg, wait_until
from tierguard.contract.job import ShadowJob
from tierguard.pipeline import message_batches
from tierguard.pipeline.context import Context
from tierguard.policy import parse_policy
from tierguard.store.db import make_engine, session, upgrade
from tierguard.store.tables import BatchJob, Sample, ShadowBatch

LABELS = ["POSITIVE", "NEGATIVE", "NEUTRAL"]
CATS = {"a": {"kind": "label", "labels": LABELS, "agreement": 1.0}}
POLICY = {"defaults": {"sample_rate": 1.0},
          "categories": {"a": {"comparator": {"type": "label", "labels": LABELS},
                               "shadow_via": "batch", "batch_max_jobs": 30,
                               "batch_max_wait_minutes": 0.02}}}
OPUS, HAIKU = "claude-opus-4-7", "claude-haiku-4-5"


def rows_of(url, table):
    with session(make_engine(url)) as s:
        return list(s.exec(select(table)))


def produced(stack, calls: int) -> tuple[tierguard.ShadowedAnthropic, object, object]:
    """``calls`` production calls of category ``a`` through the wrapper, their jobs published; then
    a worker and beat started: (the wrapped client, the worker, beat)."""
    client = tierguard.ShadowedAnthropic(anthropic.Anthropic(max_retries=0))
    for i in range(calls):
        client.messages.create(category="a", max_tokens=8, system="a: label it",
                               messages=[{"role": "user", "content": f"item {i}"}])
    assert client.tierguard_flush(10)
    return client, stack.start_worker(concurrency=4), stack.start_beat()


def test_a_batch_cycle_end_to_end_with_worker_and_beat_killed_mid_batch(stack, simulator, postgres_url,
                                                                        tmp_path):
    sim = simulator(categories=CATS, batch_delay_s=6)
    # The last 10 jobs may take more than 1.2 s to reach the database on a busy host: 6 s of wait
    # keeps them one batch (a split would still send each once, but 3 batches, not 2).
    waits = {**POLICY, "categories": {"a": {**POLICY["categories"]["a"], "batch_max_wait_minutes": 0.1}}}
    stack.configure(policy=waits, database_url=postgres_url, base_url=sim.base_url,
                    batch_poll_seconds=0.5)
    client, worker, beat = produced(stack, 40)
    wait_until(lambda: len(rows_of(postgres_url, BatchJob)) == 40, 30, "40 jobs waiting for a batch")
    assert sim.sim.requests[(OPUS, "a")] == 0  # none called one by one
    def all_at_the_api() -> bool:  # (one read: two could see a batch claimed but not yet sent)
        batches = rows_of(postgres_url, ShadowBatch)
        return sum(b.jobs for b in batches) == 40 and all(
            b.status == "in_progress" and b.api_id for b in batches)

    wait_until(all_at_the_api, 30, "every job in a batch at the API")
    for proc in (worker, beat):  # both die while the batches are being processed
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert samples(postgres_url) == 0
    stack.start_worker(concurrency=4)
    stack.start_beat()
    wait_until(lambda: samples(postgres_url) == 40, 60, "all 40 recorded from the batch results")
    wait_until(lambda: rows_of(postgres_url, BatchJob) == [], 10, "the waiting rows gone")
    time.sleep(2)  # a second collection would show now
    recorded = rows_of(postgres_url, Sample)
    assert len({x.job_id for x in recorded}) == len(recorded) == 40
    assert {(x.shadow_via, x.agree, x.error, x.shadow_latency_ms) for x in recorded} == {
        ("batch", True, None, None)}
    policy = parse_policy(POLICY)
    for x in recorded:  # at the batch discount (0.5) of Opus's price
        full = policy.cost_usd(OPUS, x.shadow_input_tokens, x.shadow_output_tokens)
        assert abs(x.shadow_cost_usd - full * 0.5) < 1e-12
    stats = httpx2.get(sim.base_url + "/_sim/stats").json()["batches"]
    # Nothing sent twice: 40 requests. In 30 + 10, or more batches when the last jobs reach the
    # database further apart than the category's wait (CI, 2026-12-05: 3 on a busy host).
    assert stats["requests"] == 40 and stats["created"] >= 2, stats
    assert {b.status for b in rows_of(postgres_url, ShadowBatch)} == {"recorded"}
    status = last_json(tg("status", "--json", env=stack.env_for_cli(), cwd=tmp_path).stdout)
    a = status["categories"]["a"]
    assert a["shadow_via"] == "batch" and a["batch"] == {"waiting": 0, "in_batches": 0, "open": 0}
    assert a["samples"] == 40
    costs = last_json(tg("costs", "--json", env=stack.env_for_cli(), cwd=tmp_path).stdout)
    assert costs["categories"]["a"]["batch_usd"] > 0 and costs["categories"]["a"]["sync_usd"] == 0
    client.tierguard_close()


def _job(sim_url, i):
    request = {"max_tokens": 8, "system": "a: label it", "messages": [{"role": "user", "content": f"x {i}"}]}
    truth = anthropic.Anthropic(base_url=sim_url, api_key=API_KEY, max_retries=0).messages.create(
        model=OPUS, **request).content[0].text
    return ShadowJob(job_id=f"job-{i}", category="a", served_model=HAIKU, shadow_model=OPUS,
                     request=request, primary_text=truth, primary_input_tokens=10,
                     primary_output_tokens=1, requested_at="2026-12-01T00:00:00+00:00")


def _settle(ctx, client, attempts, rounds=30):
    """Cycles until nothing waits or is open; the counts of every cycle summed."""
    total: Counter = Counter()
    for _ in range(rounds):
        counts, _ = message_batches.cycle(ctx, client, attempts)
        total.update(counts)
        with session(ctx.engine) as s:
            if not s.execute(sa.select(sa.func.count()).select_from(BatchJob)).scalar_one():
                return total
        time.sleep(0.25)
    raise AssertionError(f"batch jobs still open after {rounds} cycles: {total}")


def test_errored_and_expired_requests_are_retried_then_recorded_as_errors(simulator, sqlite_url):
    sim = simulator(categories=CATS, batch_delay_s=0.2)
    engine = make_engine(sqlite_url)
    upgrade(engine)
    policy = parse_policy({**POLICY, "categories": {"a": {**POLICY["categories"]["a"],
                                                          "batch_max_wait_minutes": 0.0001}}})
    ctx = Context(policy=policy, engine=engine)
    client = anthropic.Anthropic(base_url=sim.base_url, api_key=API_KEY, max_retries=0)
    jobs = [_job(sim.base_url, i) for i in range(6)]
    assert message_batches.enqueue(ctx, jobs) == 6
    assert message_batches.enqueue(ctx, jobs[:2]) == 0  # a redelivered job is kept once
    # The first batch: two errored (transient), one expired, one refused for good.
    httpx2.post(sim.base_url + "/_sim/batches", json={"errored": 2, "expired": 1})
    time.sleep(0.01)
    counts, _ = message_batches.cycle(ctx, client, 2)
    assert counts["submitted"] == 1
    wait_until(lambda: message_batches.cycle(ctx, client, 2)[0]["collected"] == 1, 10,
               "the first batch ended")
    with session(engine) as s:
        waiting = s.exec(select(BatchJob)).all()
        assert len(waiting) == 3 and {j.attempt for j in waiting} == {2}  # back, one attempt more
        assert len(s.exec(select(Sample)).all()) == 3
    # The second attempt is the last: one expires again and is recorded as an error.
    httpx2.post(sim.base_url + "/_sim/batches", json={"expired": 1})
    _settle(ctx, client, 2)
    recorded = {x.job_id: x for x in rows_of(sqlite_url, Sample)}
    assert len(recorded) == 6
    errors = [x for x in recorded.values() if x.error]
    assert [(x.error, x.attempts, x.agree) for x in errors] == [("batch_expired", 2, None)]
    assert "expired" in errors[0].reason
    retried_ok = [x for x in recorded.values() if x.attempts == 2 and not x.error]
    assert len(retried_ok) == 2 and all(x.agree for x in retried_ok)
    assert Counter(b.status for b in rows_of(sqlite_url, ShadowBatch)) == {"recorded": 2}


def test_a_permanent_batch_error_is_recorded_at_once(simulator, sqlite_url):
    sim = simulator(categories=CATS, batch_delay_s=0.1)
    engine = make_engine(sqlite_url)
    upgrade(engine)
    ctx = Context(policy=parse_policy(POLICY), engine=engine)
    client = anthropic.Anthropic(base_url=sim.base_url, api_key=API_KEY, max_retries=0)
    job = _job(sim.base_url, 1)
    no_max_tokens = {k: v for k, v in job.request.items() if k != "max_tokens"}
    message_batches.enqueue(ctx, [dataclasses.replace(job, request=no_max_tokens)])  # the API refuses it
    # Not due yet: one job, and it has not waited batch_max_wait_minutes (1.2 s).
    assert message_batches.cycle(ctx, client, 6)[0]["submitted"] == 0
    time.sleep(1.3)
    lost, _ = message_batches.cycle(ctx, client, 6, owned=lambda: False)  # the lock went elsewhere
    assert lost["lock_lost"] == 1 and lost["submitted"] == 0
    _settle(ctx, client, 6)
    [row] = rows_of(sqlite_url, Sample)
    assert row.error == "batch_errored" and row.attempts == 1
    assert row.reason.startswith("invalid_request_error")


def test_a_batch_the_api_refuses_is_split_until_each_job_is_recorded_once(simulator, sqlite_url):
    sim = simulator(categories=CATS)
    httpx2.post(sim.base_url + "/_sim/batches", json={"max_bytes": 10})  # every batch is too large: 413
    engine = make_engine(sqlite_url)
    upgrade(engine)
    policy = parse_policy({**POLICY, "categories": {"a": {**POLICY["categories"]["a"],
                                                          "batch_max_jobs": 4}}})
    ctx = Context(policy=policy, engine=engine)
    jobs = [ShadowJob(job_id=f"j{i}", category="a", served_model=HAIKU, shadow_model=OPUS,
                      request={"max_tokens": 8, "messages": [{"role": "user", "content": "x"}]},
                      primary_text="POSITIVE", requested_at="2026-12-01T00:00:00+00:00") for i in range(4)]
    message_batches.enqueue(ctx, jobs)
    client = anthropic.Anthropic(base_url=sim.base_url, api_key=API_KEY, max_retries=0)
    sizes, create = [], client.messages.batches.create

    def counted(**kw):  # the real call over HTTP, its size noted
        sizes.append(len(kw["requests"]))
        return create(**kw)

    client.messages.batches.create = counted
    total = _settle(ctx, client, 6)
    assert sizes == [4, 2, 2, 1, 1, 1, 1] and total["split"] == 3 and total["refused"] == 4
    assert httpx2.get(sim.base_url + "/_sim/stats").json()["batches"]["created"] == 0
    recorded = rows_of(sqlite_url, Sample)
    assert sorted(x.job_id for x in recorded) == ["j0", "j1", "j2", "j3"]
    assert {x.error for x in recorded} == {"batch_refused"}


def test_a_killed_collector_frees_the_batch_lock_within_its_ttl(redis_url):
    """The lock lives while its holder does (a heartbeat extends it past its TTL) and lapses a TTL
    after the holder is killed outright, so another worker collects."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import redis

    from tierguard.contract import keys
    from tierguard.pipeline.locks import held

    r = redis.Redis.from_url(redis_url)
    code = ("import sys, time, redis; from tierguard.pipeline.locks import held; "
            "r = redis.Redis.from_url(sys.argv[1]); cm = held(r, sys.argv[2], 1.5); "
            "assert cm.__enter__(); print('held', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", code, redis_url, keys.BATCH_LOCK],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        time.sleep(3.5)  # more than twice the TTL: only the heartbeat keeps it
        with held(r, keys.BATCH_LOCK, 1.5) as ours:
            assert not ours
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(10)
        start = time.monotonic()
        while r.exists(keys.BATCH_LOCK):
            assert time.monotonic() - start < 3, "the dead holder's lock outlived its TTL"
            time.sleep(0.05)
        with held(r, keys.BATCH_LOCK, 1.5) as ours:
            assert ours and ours.still()
            r.delete(keys.BATCH_LOCK)  # lost (a long Redis blip): another worker could take it now
            assert not ours.still()
    finally:
        holder.kill()
