"""Answers paid for are kept until recorded: a message run again after a failure records them
without calling a model again; a job already recorded is never called again."""

import uuid

import anthropic
import httpx2
import pytest
import redis
import sqlalchemy as sa
from cryptography.fernet import Fernet
from sqlmodel import select

from tests.helpers import API_KEY
from tierguard.contract import keys
from tierguard.contract.job import ShadowJob
from tierguard.contract.sealing import Sealer, seal_job
from tierguard.errors import StoreUnavailable
from tierguard.pipeline import answers, flow
from tierguard.pipeline.context import Context
from tierguard.pipeline.fanout import LoopRunner
from tierguard.pipeline.recorder import record_many
from tierguard.policy import parse_policy
from tierguard.store.db import session
from tierguard.store.tables import Sample

LABELS = ["RED", "GREEN"]


def paid(sim) -> int:
    """Messages API calls the simulator answered so far."""
    return sum(r["count"] for r in httpx2.get(sim.base_url + "/_sim/stats").json()["requests"])
POLICY = parse_policy({"categories": {"labels": {
    "comparator": {"type": "label", "labels": LABELS}, "noise_floor_rate": 1.0}}})


def job(i: int) -> ShadowJob:
    return ShadowJob(job_id=uuid.uuid4().hex, category="labels", served_model="claude-haiku-4-5",
                     shadow_model="claude-opus-4-7",
                     request={"max_tokens": 8, "system": "labels: pick",
                              "messages": [{"role": "user", "content": f"item {i}"}]},
                     primary_text="RED")


class DatabaseDownOnce:
    """Records as the worker does, after one failed attempt (the database was away)."""

    def __init__(self, engine):
        self.engine, self.failed = engine, False

    def __call__(self, results):
        if not self.failed:
            self.failed = True
            raise sa.exc.OperationalError("INSERT", {}, Exception("connection refused"))
        return record_many(self.engine, None, POLICY, results)


@pytest.mark.parametrize("sealed", [False, True, "signed"])
def test_a_rerun_after_a_database_failure_calls_no_model(engine, simulator, redis_url, sealed):
    sim = simulator(categories={"labels": {"kind": "label", "labels": LABELS}})
    r = redis.Redis.from_url(redis_url)
    runner = LoopRunner(lambda: anthropic.AsyncAnthropic(base_url=sim.base_url, api_key=API_KEY,
                                                         max_retries=0))
    ctx = Context(policy=POLICY, engine=engine, redis=r, runner=runner, recorder=DatabaseDownOnce(engine),
                  sealer=None if not sealed else Sealer([], "s" * 40) if sealed == "signed" else
                  Sealer([Fernet.generate_key().decode()]))
    jobs = [seal_job(job(i), ctx.sealer).to_dict() for i in range(5)]  # as the publisher sends them
    with pytest.raises(StoreUnavailable):
        flow.run(ctx, jobs, 1, max_attempts=3, retry_cap=1.0)
    calls = paid(sim)
    assert calls == 10  # each job's shadow and its noise twin, paid once
    stored = r.get(keys.ANSWERS.format(job_id=jobs[0]["job_id"]))
    assert stored is not None and (b"claude-opus-4-7" in stored) != (sealed is True)  # sealed: ciphertext
    if sealed == "signed":  # in clear with a MAC: an answer altered in Redis is not used
        key = keys.ANSWERS.format(job_id=jobs[0]["job_id"])
        r.set(key, stored.replace(b"labels", b"stolen"))
        assert answers.kept(r, ctx.sealer, [ShadowJob.from_dict(jobs[0])]) == {}
        r.set(key, stored)

    after = flow.run(ctx, jobs, 2, max_attempts=3, retry_cap=1.0)
    assert paid(sim) == calls  # nothing bought again
    assert after.recorded == 10 and after.again == []
    with session(engine) as s:
        kinds = sorted(x.kind for x in s.exec(select(Sample)))
    assert kinds == ["noise"] * 5 + ["shadow"] * 5
    assert r.get(keys.ANSWERS.format(job_id=jobs[0]["job_id"])) is None  # let go once recorded

    again = flow.run(ctx, jobs, 1, max_attempts=3, retry_cap=1.0)  # the same message redelivered
    assert again.recorded == 0 and paid(sim) == calls


def test_kept_answers_round_trip_every_field():
    from tierguard.compare import Verdict
    from tierguard.pipeline.calls import Answer
    from tierguard.pipeline.results import JudgeUsage, Result

    j = job(1)
    result = Result(j, Answer("RED", 10, 2, 123.0, 1, 2, headers={"x": "y"}), Verdict(True, 1.0, "same"),
                    None, 2, kind="probe", judge=JudgeUsage("claude-opus-4-7", 5, 6, 0, 1))
    back = answers.decode(answers.encode(result), j.request)
    assert back == Result(j, Answer("RED", 10, 2, 123.0, 1, 2), Verdict(True, 1.0, "same"), None, 2,
                          kind="probe", judge=JudgeUsage("claude-opus-4-7", 5, 6, 0, 1))


def test_a_run_leaves_jobs_another_live_run_is_calling(engine, simulator, redis_url):
    """A message redelivered while its first run still calls: its jobs go back for later, unpaid."""
    sim = simulator(categories={"labels": {"kind": "label", "labels": LABELS}})
    r = redis.Redis.from_url(redis_url)
    ctx = Context(policy=POLICY, engine=engine, redis=r, runner=LoopRunner(
        lambda: anthropic.AsyncAnthropic(base_url=sim.base_url, api_key=API_KEY, max_retries=0)))
    jobs = [job(i).to_dict() for i in range(3)]
    assert answers.claim(r, [jobs[0]["job_id"], jobs[1]["job_id"]], 120) == {}  # the first run
    after = flow.run(ctx, jobs, 1, max_attempts=3, retry_cap=1.0, max_countdown=30.0)
    assert after.recorded == 2 and paid(sim) == 2  # the third job and its noise twin only
    assert sorted(a.job_id for a in after.again) == sorted(j["job_id"] for j in jobs[:2])
    assert all(a.delay <= 30.0 and a.retries == 0 for a in after.again)  # no attempt spent
    assert not r.exists(keys.CLAIM.format(job_id=jobs[2]["job_id"]))  # released once recorded


@pytest.mark.parametrize("sealed", [False, True, "signed"])
def test_kept_answers_with_a_nested_value_are_serialised_once_in_every_mode(redis_url, sealed,
                                                                            monkeypatch):
    from dataclasses import dataclass

    from tierguard.compare import Verdict
    from tierguard.pipeline.calls import Answer
    from tierguard.pipeline.results import Result

    @dataclass
    class Span:  # a comparator's detail may hold a dataclass
        start: int
        end: int

    sealer = (None if not sealed else Sealer([], "s" * 40) if sealed == "signed" else
              Sealer([Fernet.generate_key().decode()]))
    j = job(1)
    kept = Result(j, Answer("RED", 10, 2, 5.0), Verdict(True, 1.0, "same", {"span": Span(0, 3)}), None, 1)
    r = redis.Redis.from_url(redis_url)
    dumped = []
    dumps = answers.json.dumps
    monkeypatch.setattr(answers.json, "dumps", lambda *a, **k: (dumped.append(a[0]), dumps(*a, **k))[1])
    answers.keep(r, sealer, [kept], 60)
    assert len([d for d in dumped if isinstance(d, list)]) == 1  # the results, once
    monkeypatch.undo()
    back = answers.kept(r, sealer, [j])[j.job_id]
    assert [x.verdict.detail for x in back] == [{"span": {"start": 0, "end": 3}}]
