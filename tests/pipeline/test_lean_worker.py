"""The worker's CPU cuts keep every behaviour: no rollout read without a possible share (a share
still feeds its rollout), a publisher's first delivery is not looked up, claims kept alive by one
heartbeat thread, cheap comparisons on the loop, kept answers written in one command."""

import threading
import time
import uuid
from types import SimpleNamespace

import anthropic
import redis
import sqlalchemy as sa
from sqlmodel import select

from tests.helpers import API_KEY
from tierguard.compare import Verdict
from tierguard.contract import keys
from tierguard.contract.broker import BATCH_TASK, SHADOW_TASK
from tierguard.contract.job import ShadowJob
from tierguard.pipeline import answers, fanout, rollouts, tasks
from tierguard.pipeline.calls import Answer
from tierguard.pipeline.recorder import record_many
from tierguard.pipeline.results import Result
from tierguard.policy import parse_policy
from tierguard.store.db import session, utcnow
from tierguard.store.tables import Rollout, Sample

HAIKU, SONNET, OPUS = "claude-haiku-4-5", "claude-sonnet-4-6", "claude-opus-4-7"
LABELS = ["RED", "GREEN"]
POLICY = parse_policy({"categories": {"labels": {"comparator": {"type": "label", "labels": LABELS}}}})


def result(served: str, shadow: str = OPUS) -> Result:
    job = ShadowJob(job_id=uuid.uuid4().hex, category="labels", served_model=served, shadow_model=shadow,
                    request={"max_tokens": 8, "system": "labels: pick",
                             "messages": [{"role": "user", "content": "x"}]}, primary_text="RED",
                    requested_at=utcnow().isoformat())
    return Result(job, Answer("RED", 10, 1, 5.0, snapshot=shadow), Verdict(True, 1.0, "same"), None, 1)


def statements(engine):
    """Every SQL statement the engine runs from now on (a list that fills)."""
    seen: list[str] = []
    sa.event.listen(engine, "before_cursor_execute", lambda *a, **_: seen.append(a[2]))
    return seen


def test_a_transaction_without_a_rollout_share_reads_no_rollout_and_a_share_still_feeds(engine):
    record_many(engine, None, POLICY, [result(HAIKU)])  # the category row, on its candidate
    seen = statements(engine)
    record_many(engine, None, POLICY, [result(HAIKU) for _ in range(3)])
    assert seen and not [q for q in seen if "rollout" in q.lower()]

    with session(engine) as s:
        rollouts.begin(s, POLICY, "labels", SONNET, (5, 50, 100), 60.0, 100, "test", utcnow())
        s.commit()
    record_many(engine, None, POLICY, [result(HAIKU), result(SONNET), result(SONNET)])
    with session(engine) as s:
        rollout = s.exec(select(Rollout)).one()
    assert rollout.status == "running" and rollout.samples == 2  # the new model's comparisons only


def test_only_a_publishers_first_delivery_is_fresh():
    def task(name=BATCH_TASK, retries=0, redelivered=None):
        info = {} if redelivered is None else {"redelivered": redelivered}
        return SimpleNamespace(name=name, request=SimpleNamespace(retries=retries, delivery_info=info))

    assert tasks.fresh(task()) and tasks.fresh(task(redelivered=False))
    assert not tasks.fresh(task(redelivered=True))  # restored after a worker died, or requeued
    assert not tasks.fresh(task(retries=1))  # the database was away: answers may be kept
    assert not tasks.fresh(task(SHADOW_TASK))  # a job sent again (another run may record it)


def test_claims_live_while_their_runs_do_on_one_heartbeat_thread(redis_url):
    r = redis.Redis.from_url(redis_url)
    first, second = [uuid.uuid4().hex for _ in range(2)], [uuid.uuid4().hex for _ in range(2)]
    with answers.claimed(r, first, 0.3) as busy, answers.claimed(r, second, 0.3):
        assert busy == {}
        assert answers.claim(r, first[:1], 0.3).keys() == {first[0]}  # held by the run above
        time.sleep(0.8)  # past the TTL: extended
        assert all(r.exists(keys.CLAIM.format(job_id=j)) for j in first + second)
        beats = [t for t in threading.enumerate() if t.name.startswith("tierguard-heartbeat")]
        assert [t.name for t in beats] == ["tierguard-heartbeats"]
    assert not any(r.exists(keys.CLAIM.format(job_id=j)) for j in first + second)  # released


def test_cheap_comparisons_run_on_the_loop_and_others_off_it(simulator):
    sim = simulator(categories={"labels": {"kind": "label", "labels": LABELS}})
    policy = parse_policy({"categories": {"labels": {"comparator": {"type": "label", "labels": LABELS}},
                                          "free": {"comparator": "similarity"}}})
    job = result(HAIKU).job
    assert fanout.inline(policy, job, Answer("RED", 1, 1, 1.0))
    assert not fanout.inline(policy, job, Answer("RED " * fanout.INLINE_MAX, 1, 1, 1.0))  # too long
    assert not fanout.inline(policy, ShadowJob(**{**job.to_dict(), "category": "free"}),
                             Answer("RED", 1, 1, 1.0))

    runner = fanout.LoopRunner(lambda: anthropic.AsyncAnthropic(base_url=sim.base_url, api_key=API_KEY,
                                                                max_retries=0))
    hops = []
    off_loop = runner.off_loop
    runner.off_loop = lambda *a: (hops.append(a[0]), off_loop(*a))[1]
    jobs = [ShadowJob(**{**result(HAIKU).job.to_dict(), "category": c}) for c in ("labels", "free")]
    done, retries = runner.run(fanout.run_jobs(runner, policy, jobs, attempt=1, final=True))
    assert retries == [] and all(r.verdict is not None for r in done)
    assert len(hops) == 1  # the similarity comparison only


def test_kept_answers_are_written_in_one_command_and_read_back(redis_url):
    r = redis.Redis.from_url(redis_url)
    results = [result(HAIKU) for _ in range(3)]
    before = r.info("commandstats")
    answers.keep(r, None, results, 60)
    after = r.info("commandstats")
    assert after.get("cmdstat_set", {}).get("calls", 0) - before.get("cmdstat_set", {}).get("calls", 0) == 3
    assert after["cmdstat_eval"]["calls"] - before.get("cmdstat_eval", {}).get("calls", 0) == 1
    assert 0 < r.ttl(keys.ANSWERS.format(job_id=results[0].job.job_id)) <= 60
    kept = answers.kept(r, None, [x.job for x in results])
    assert [kept[x.job.job_id] for x in results] == [[x] for x in results]


def test_a_fresh_message_asks_the_database_once_and_redis_not_for_earlier_runs(engine, simulator,
                                                                              redis_url, monkeypatch):
    from tierguard.pipeline import flow
    from tierguard.pipeline.context import Context

    sim = simulator(categories={"labels": {"kind": "label", "labels": LABELS}})
    r = redis.Redis.from_url(redis_url)
    ctx = Context(policy=POLICY, engine=engine, redis=r, runner=fanout.LoopRunner(
        lambda: anthropic.AsyncAnthropic(base_url=sim.base_url, api_key=API_KEY, max_retries=0)))
    kept_reads: list[int] = []
    kept = answers.kept
    monkeypatch.setattr(answers, "kept", lambda *a: (kept_reads.append(len(a[2])), kept(*a))[1])
    seen = statements(engine)
    for fresh in (True, False):
        del seen[:], kept_reads[:]
        after = flow.run(ctx, [result(HAIKU).job.to_dict() for _ in range(3)], 1, max_attempts=3,
                         retry_cap=1.0, fresh=fresh)
        assert after.recorded == 3
        looked_up = [q for q in seen if q.lstrip().lower().startswith("select")
                     and "from sample" in q.lower()]
        assert len(looked_up) == 1 and bool(kept_reads) != fresh


def test_a_job_sent_twice_is_paid_once_even_on_a_fresh_delivery(engine, simulator, redis_url):
    from tierguard.pipeline import flow
    from tierguard.pipeline.context import Context

    sim = simulator(categories={"labels": {"kind": "label", "labels": LABELS}})
    ctx = Context(policy=POLICY, engine=engine, redis=redis.Redis.from_url(redis_url),
                  runner=fanout.LoopRunner(lambda: anthropic.AsyncAnthropic(base_url=sim.base_url,
                                                                            api_key=API_KEY, max_retries=0)))
    jobs = [result(HAIKU).job.to_dict() for _ in range(2)]
    first = flow.run(ctx, jobs, 1, max_attempts=3, retry_cap=1.0, fresh=True)
    calls = sum(sim.sim.requests.values())
    again = flow.run(ctx, jobs + [result(HAIKU).job.to_dict()], 1, max_attempts=3, retry_cap=1.0,
                     fresh=True)  # the publisher sent two of them again, in a new message
    assert (first.recorded, again.recorded) == (2, 1)
    assert sum(sim.sim.requests.values()) == calls + 1  # the new job's call only
    with session(engine) as s:
        assert s.execute(sa.select(sa.func.count()).select_from(Sample)).scalar_one() == 3


def test_a_forked_child_beats_even_when_the_parent_held_the_heartbeats_lock_at_the_fork(redis_url):
    import os

    from tierguard.pipeline.locks import BEATS

    r = redis.Redis.from_url(redis_url)
    job_id = uuid.uuid4().hex
    with answers.claimed(r, [uuid.uuid4().hex], 30.0):  # the parent's heartbeat thread runs
        with BEATS._wake:  # held by a parent's thread at the fork
            pid = os.fork()
            if pid == 0:  # the child: claims kept alive by its own thread, never the parent's lock
                code = 1
                try:
                    with answers.claimed(r, [job_id], 0.3):
                        time.sleep(0.8)  # past the TTL: extended
                        code = 0 if r.exists(keys.CLAIM.format(job_id=job_id)) else 2
                finally:
                    os._exit(code)
        deadline = time.monotonic() + 20
        while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        if done[0] == 0:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        assert done[0] == pid and os.waitstatus_to_exitcode(done[1]) == 0


def test_the_writer_records_many_messages_in_one_transaction_and_a_bad_result_alone(engine):
    from concurrent.futures import ThreadPoolExecutor

    from tierguard.pipeline.writer import Writer

    writer = Writer(engine, None, POLICY, max_wait=0.5)
    transactions = []
    record = record_many

    def counted(e, r, p, results):
        transactions.append(len(results))
        if any(x.job.job_id == "bad" for x in results):
            raise ValueError("a result no transaction takes")
        return record(e, r, p, results)

    import tierguard.pipeline.writer as writer_module
    writer_module.record_many, saved = counted, writer_module.record_many
    try:
        messages = [[result(HAIKU) for _ in range(3)] for _ in range(4)]
        with ThreadPoolExecutor(4) as pool:
            outcomes = list(pool.map(writer.record_all, messages))
        assert [[o.status for o in out] for out in outcomes] == [["recorded"] * 3] * 4
        assert transactions[0] > 3 and sum(transactions) == 12  # messages share transactions

        bad = result(HAIKU)
        bad = Result(ShadowJob(**{**bad.job.to_dict(), "job_id": "bad"}), bad.answer, bad.verdict, None, 1)
        good = [result(HAIKU), result(HAIKU)]
        try:
            writer.record_all([good[0], bad, good[1]])
            raise AssertionError("the message with a bad result must fail")
        except ValueError:
            pass
    finally:
        writer_module.record_many = saved
    with session(engine) as s:
        ids = set(s.exec(select(Sample.job_id)).all())
    assert {x.job.job_id for x in good} <= ids and "bad" not in ids  # the good ones recorded alone


def test_a_transaction_locks_its_categories_in_one_query_and_creates_missing_rows(engine):
    from tierguard.routing.routes import lock_categories

    policy = parse_policy({"categories": {n: {"comparator": {"type": "label", "labels": LABELS}}
                                          for n in ("alpha", "beta", "gamma")}})
    with session(engine) as s:
        rows = lock_categories(s, [policy.category("gamma"), policy.category("alpha")])  # created
        s.commit()
    assert sorted(rows) == ["alpha", "gamma"] and rows["alpha"].routed_model == HAIKU
    seen = statements(engine)
    with session(engine) as s:
        rows = lock_categories(s, [policy.category(n) for n in ("gamma", "beta", "alpha")])
        s.commit()
    assert sorted(rows) == ["alpha", "beta", "gamma"]
    reads = [q for q in seen if q.lstrip().lower().startswith("select") and "from category" in q.lower()]
    assert len(reads) == 2  # one for all, one again after creating beta
    del seen[:]
    import dataclasses

    record_many(engine, None, policy, [dataclasses.replace(x, job=dataclasses.replace(x.job, category=n))
                                       for n, x in (("gamma", result(HAIKU)), ("alpha", result(HAIKU)),
                                                    ("beta", result(HAIKU)))])
    assert len([q for q in seen if q.lstrip().lower().startswith("select")
                and "from category" in q.lower()]) == 1


def test_a_shadow_client_merges_each_path_once_and_calls_the_same_url(simulator):
    import asyncio

    sim = simulator(categories={"labels": {"kind": "label", "labels": LABELS}})
    client = fanout.ShadowClient(base_url=sim.base_url + "/api", api_key=API_KEY, max_retries=0)
    plain = anthropic.AsyncAnthropic(base_url=sim.base_url + "/api", api_key=API_KEY)
    assert client._prepare_url("/v1/messages") == plain._prepare_url("/v1/messages")
    assert client._prepare_url("/v1/messages") is client._prepare_url("/v1/messages")
    for i in range(fanout.URLS_KEPT * 2):  # paths with ids: merged right, kept up to the bound
        path = f"/v1/messages/batches/b{i}"
        assert client._prepare_url(path) == plain._prepare_url(path)
    assert len(client._urls) == fanout.URLS_KEPT
    client = fanout.ShadowClient(base_url=sim.base_url, api_key=API_KEY, max_retries=0)
    request = {"max_tokens": 8, "system": "labels: pick", "messages": [{"role": "user", "content": "x"}]}

    async def twice():
        return [await fanout.call_model_async(client, OPUS, request) for _ in range(2)]

    assert all(answer.text in LABELS for answer in asyncio.run(twice()))
    assert sum(sim.sim.requests.values()) == 2
