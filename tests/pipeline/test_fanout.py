"""Comparisons never block the worker's event loop: they run off it, within a time budget, and a
comparison past it is recorded as comparator_timeout while the other jobs go on."""

import asyncio
import threading
import time
import uuid

import anthropic
import redis
from sqlmodel import select

from tests.helpers import API_KEY
from tests.pipeline.slow_comparator import FINISHED
from tierguard.compare.similarity import Similarity
from tierguard.contract.job import ShadowJob
from tierguard.pipeline import flow
from tierguard.pipeline.context import Context
from tierguard.pipeline.fanout import LoopRunner
from tierguard.policy import parse_policy
from tierguard.store.db import session
from tierguard.store.tables import Sample

LABELS = ["RED", "GREEN"]
POLICY = parse_policy({"categories": {
    "slow": {"comparator": {"type": "tests.pipeline.slow_comparator:Slow", "seconds": 3}},
    "labels": {"comparator": {"type": "label", "labels": LABELS}}}})


def job(category: str, i: int, primary: str = "RED") -> dict:
    return ShadowJob(job_id=uuid.uuid4().hex, category=category, served_model="claude-haiku-4-5",
                     shadow_model="claude-opus-4-7",
                     request={"max_tokens": 8, "system": f"{category}: pick",
                              "messages": [{"role": "user", "content": f"item {i}"}]},
                     primary_text=primary).to_dict()


def test_a_slow_comparison_is_a_recorded_timeout_and_the_loop_stays_free(engine, simulator, redis_url):
    sim = simulator(categories={"labels": {"kind": "label", "labels": LABELS},
                                "slow": {"kind": "label", "labels": LABELS}})
    runner = LoopRunner(lambda: anthropic.AsyncAnthropic(base_url=sim.base_url, api_key=API_KEY,
                                                         max_retries=0), compare_timeout=0.5)
    ctx = Context(policy=POLICY, engine=engine, redis=redis.Redis.from_url(redis_url), runner=runner)
    lags, done = [], threading.Event()

    def probe() -> None:  # how long the loop takes to run a trivial coroutine, every 50 ms
        while not done.is_set():
            t0 = time.monotonic()
            asyncio.run_coroutine_threadsafe(asyncio.sleep(0), runner.loop).result()
            lags.append(time.monotonic() - t0)
            time.sleep(0.05)

    # First use (SDK types, SQL compiled, clients made) is slow under the burner's hold on the GIL:
    # done first, so the window below holds only what the test is about (it failed run alone).
    assert flow.run(ctx, [job("labels", 99)], 1, max_attempts=3, retry_cap=1.0).recorded == 1
    watcher = threading.Thread(target=probe, daemon=True)
    watcher.start()
    mine = uuid.uuid4().hex
    after = flow.run(ctx, [job("slow", 0, mine)] + [job("labels", i) for i in range(6)], 1, max_attempts=3,
                     retry_cap=1.0)
    assert after.recorded == 7 and mine not in FINISHED  # recorded while the slow comparison still ran
    done.set()
    watcher.join()
    # On the loop, the 3 s comparison would stall it for seconds (bound with room for a busy host).
    assert max(lags) < 1.5, f"the loop stalled for {max(lags):.2f}s"
    with session(engine) as s:
        rows = {r.category: r for r in s.exec(select(Sample))}
        errors = [r.error for r in s.exec(select(Sample).where(Sample.category == "labels"))]
    assert rows["slow"].error == "comparator_timeout" and "0.5s" in rows["slow"].reason
    assert errors == [None] * 7


def test_rouge_l_on_a_crafted_half_megabyte_answer_is_bounded():
    crafted = " ".join(f"w{i % 997}" for i in range(80_000))  # ~500 KB
    t0 = time.process_time()
    verdict = Similarity("rougeL", 0.8).compare(crafted, crafted)
    assert time.process_time() - t0 < 1.0 and verdict.agree and verdict.detail["method"] == "f1"


def test_the_worker_loop_setting_picks_the_runners_loop(simulator):
    import pydantic
    import uvloop

    from tierguard.config import Settings

    sim = simulator(categories={"labels": {"kind": "label", "labels": LABELS}})
    assert Settings().worker_loop == "uvloop"  # the default: about 12 % less CPU per comparison
    for kind, loop_type in (("uvloop", uvloop.Loop), ("asyncio", asyncio.BaseEventLoop)):
        runner = LoopRunner(lambda: anthropic.AsyncAnthropic(base_url=sim.base_url, api_key=API_KEY,
                                                             max_retries=0), loop=kind)

        async def call(runner: LoopRunner = runner) -> str:
            answer = await runner.client.messages.create(
                model="claude-opus-4-7", max_tokens=8, system="labels: pick",
                messages=[{"role": "user", "content": "item"}])
            return answer.content[0].text

        assert runner.run(call()) in LABELS
        assert isinstance(runner.loop, loop_type)
        assert (kind == "uvloop") == isinstance(runner.loop, uvloop.Loop)
    try:
        Settings(worker_loop="trio")
    except pydantic.ValidationError as err:
        assert "worker_loop" in str(err) and "uvloop|asyncio" in str(err)
    else:
        raise AssertionError("an unknown loop was accepted")
