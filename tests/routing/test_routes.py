"""Routes are the database's: a poisoned Redis copy never routes to a model the policy does not list,
beat's rewrite restores the copy whatever its version says, and a pin rewrites it at once."""

import redis

from tests.app.test_client import POLICY, SCENARIO, call, wrapper
from tests.helpers import wait_until
from tierguard.ops.actions import pin
from tierguard.routing.routes import REDIS_KEY, derive, ensure_categories
from tierguard.store.db import make_engine, upgrade


def test_a_poisoned_route_copy_is_refused_rewritten_and_overridden(simulator, redis_url, sqlite_url):
    server = simulator(**SCENARIO)
    engine = make_engine(sqlite_url)
    upgrade(engine)
    ensure_categories(engine, POLICY)
    r = redis.Redis.from_url(redis_url)
    client = wrapper(server, redis_url=redis_url, database_url=sqlite_url, route_ttl=0.05)
    r.hset(REDIS_KEY, "sentiment", "any-model|999999999")  # one HSET by anyone who can reach Redis
    served = []

    def refused() -> bool:
        served.append(call(client).model)
        return client.tierguard_stats().get("route_refused", 0) > 0

    wait_until(refused, 5, "the forged route read")
    assert "any-model" not in served and served[-1] == "claude-opus-4-7"  # the reference instead
    assert derive(engine, r) == 1  # each worker's 5 s rewrite: the database's copy, whatever Redis said
    assert r.hget(REDIS_KEY, "sentiment") == b"claude-haiku-4-5|1"
    wait_until(lambda: call(client).model == "claude-haiku-4-5", 5, "the database's route again")

    r.hset(REDIS_KEY, "sentiment", "claude-haiku-4-5|999999999")  # a listed model, a forged version
    pin(engine, r, POLICY, "sentiment", "claude-opus-4-7", reason="incident", actor="oncall")
    assert r.hget(REDIS_KEY, "sentiment") == b"claude-opus-4-7|2"  # the pin rewrote it
    wait_until(lambda: call(client).model == "claude-opus-4-7", 5, "the pinned route")
    client.tierguard_close()
