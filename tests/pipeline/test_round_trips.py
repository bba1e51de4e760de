"""A message's Redis round trips: the pauses and headroom views read in one, the answers kept in one,
the kept answers, stored payloads and claims let go in one, the rate-limit views kept in one."""

import time

import anthropic
import redis

from tests.helpers import API_KEY
from tests.pipeline.test_lean_worker import HAIKU, LABELS, POLICY, result
from tierguard.contract import keys
from tierguard.headroom import pauses, ratelimits
from tierguard.headroom.deferral import Room
from tierguard.pipeline import fanout, flow
from tierguard.pipeline.context import Context
from tierguard.policy import parse_policy


def counted(r: redis.Redis) -> list[str]:
    """The commands of each round trip ``r`` makes from now on (one entry per connection taken)."""
    trips: list[str] = []
    pool = r.connection_pool
    take = pool.get_connection

    def get_connection(*args, **kwargs):
        conn = take(*args, **kwargs)
        send = conn.send_packed_command

        def sent(command, *a, **k):
            parts = command if isinstance(command, list) else [command]
            trips.append(b"".join(map(bytes, parts)).decode("latin-1"))
            conn.send_packed_command = send  # one entry per round trip taken
            return send(command, *a, **k)

        conn.send_packed_command = sent
        return conn

    pool.get_connection = get_connection
    return trips


def test_a_fresh_message_makes_few_round_trips_and_leaves_no_claim_or_answer(engine, simulator, redis_url):
    sim = simulator(categories={"labels": {"kind": "label", "labels": LABELS}})
    r = redis.Redis.from_url(redis_url)
    ctx = Context(policy=POLICY, engine=engine, redis=r, runner=fanout.LoopRunner(
        lambda: anthropic.AsyncAnthropic(base_url=sim.base_url, api_key=API_KEY, max_retries=0)))
    jobs = [result(HAIKU).job for _ in range(3)]
    trips = counted(r)
    after = flow.run(ctx, [j.to_dict() for j in jobs], 1, max_attempts=3, retry_cap=1.0, fresh=True)
    assert after.recorded == 3
    heads = [t.split("\r\n")[2] for t in trips]
    assert heads == ["MGET", "EVAL", "EVAL", "DEL"]  # pauses + views, claims, kept answers, let go
    assert "HGETALL" in trips[0]  # the headroom views ride with the pauses
    let_go = [k.format(job_id=j.job_id) for j in jobs for k in (keys.ANSWERS, keys.CLAIM)]
    assert all(key in trips[3] for key in let_go)
    for job in jobs:
        assert not r.exists(keys.CLAIM.format(job_id=job.job_id), keys.ANSWERS.format(job_id=job.job_id))


def headers(remaining: int) -> dict[str, str]:
    reset = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 30))
    prefix = "anthropic-ratelimit-requests-"
    return {prefix + "limit": "100", prefix + "remaining": str(remaining), prefix + "reset": reset}


def test_views_kept_in_one_transaction_and_read_with_the_pauses_in_one_trip(redis_url):
    r = redis.Redis.from_url(redis_url)
    policy = parse_policy({"categories": {"labels": {"comparator": {"type": "label", "labels": LABELS}}}})
    room = Room(r, "", policy.shadow_headroom, {})
    trips = counted(r)
    room.remember({HAIKU: headers(1), "claude-opus-4-7": headers(90)})
    assert len(trips) == 1 and "MULTI" in trips[0] and "EXEC" in trips[0]
    assert ratelimits.view(r, HAIKU) == {"requests": 0.01}
    pauses.pause(r, "claude-sonnet-4-6", 20)
    del trips[:]
    shut = room.shut([HAIKU, "claude-opus-4-7", "claude-sonnet-4-6"])
    assert len(trips) == 1
    assert set(shut) == {HAIKU, "claude-sonnet-4-6"}  # short of headroom; paused
    assert shut["claude-sonnet-4-6"] == pauses.paused(r, ["claude-sonnet-4-6"])["claude-sonnet-4-6"]
    assert shut[HAIKU] > time.time()
