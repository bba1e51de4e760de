"""Two teams at one gateway (issue 25): a key names only its team's categories, and one team's 429s
pause nobody else's shadows."""

import hashlib

import httpx2
import redis

from tests.app.gatewayparts import BODY, LABELS, SCENARIO, start
from tests.helpers import wait_until
from tierguard.contract import keys
from tierguard.headroom import ratelimits

ALPHA, BETA = "sk-team-alpha-0001", "sk-team-beta-0002"
POLICY = {"defaults": {"sample_rate": 1.0},
          "categories": {name: {"comparator": {"type": "label", "labels": LABELS}}
                         for name in ("sentiment", "beta-sentiment")},
          "gateway_tenants": {
              "alpha": {"keys": [hashlib.sha256(ALPHA.encode()).hexdigest()], "categories": ["sentiment"]},
              "beta": {"keys": [hashlib.sha256(BETA.encode()).hexdigest()], "categories": ["beta-*"]}}}


def post(gw, key: str, category: str) -> httpx2.Response:
    return httpx2.post(gw.base + "/v1/messages", json=BODY, timeout=10,
                       headers={"x-api-key": key, "anthropic-version": "2023-06-01",
                                "x-tierguard-category": category})


def test_a_key_names_only_its_teams_categories(stack, tmp_path, simulator, sqlite_url, redis_url):
    sim = simulator(**SCENARIO)
    stack.configure(policy=POLICY, database_url=sqlite_url, base_url=sim.base_url)
    gw = start(stack, tmp_path)
    assert post(gw, ALPHA, "sentiment").json()["model"] == "claude-haiku-4-5"  # its own: routed
    foreign = post(gw, ALPHA, "beta-sentiment")  # another team's category: as sent
    assert foreign.status_code == 200 and foreign.json()["model"] == "claude-opus-4-7"
    assert post(gw, "sk-nobody", "sentiment").json()["model"] == "claude-opus-4-7"  # no team: as sent
    wait_until(lambda: gw.stats().get("uncategorized_tenant_mismatch") == 2, 5, "two mismatches counted")
    assert gw.stats().get("submitted") == 1  # alpha's own call shadowed, neither mismatch

    httpx2.post(sim.base_url + "/_sim/fail", json={"status": 429, "count": 1, "retry_after": 600})
    assert post(gw, BETA, "beta-sentiment").status_code == 429  # beta's own limits
    r = redis.Redis.from_url(redis_url)
    mine = keys.PAUSE.format(model=ratelimits.scoped("claude-haiku-4-5", ratelimits.fingerprint(BETA)))
    wait_until(lambda: r.exists(mine), 10, "beta's pause, under its key")
    assert not r.exists(keys.PAUSE.format(model="claude-haiku-4-5"))  # nobody else's shadows wait
