"""Categories belong to their teams: listed ones never count against max_categories, idle unlisted
ones are forgotten, and at a gateway with tenants a key names only its team's categories."""

import datetime as dt
import hashlib
import time

from tierguard.app.core import Core
from tierguard.config import get_settings
from tierguard.policy import parse_policy
from tierguard.routing.routes import ensure_categories, lock_category
from tierguard.store import maintenance
from tierguard.store.db import make_engine, session, upgrade
from tierguard.store.tables import Category

ALPHA, BETA = "sk-alpha-key", "sk-beta-key"


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def core(redis_url, sqlite_url, **policy) -> Core:
    return Core(get_settings(redis_url=redis_url, database_url=sqlite_url),
                parse_policy({"categories": {"billing-refunds": {}, "support": {}}, **policy}))


def test_listed_categories_never_count_and_idle_unlisted_ones_are_forgotten(redis_url, sqlite_url):
    c = core(redis_url, sqlite_url, max_categories=2, unknown_category_ttl_days=1.5 / 86_400)
    request = {"max_tokens": 8, "messages": []}
    assert c.route("junk-1", request)[0] and c.route("junk-2", request)[0]
    assert c.route("junk-3", request)[0] is None  # the cap: two unlisted at once
    assert c.route("billing-refunds", request)[0] and c.route("support", request)[0]  # listed: always
    time.sleep(1.6)  # junk-1 and junk-2 idle past the TTL
    assert c.route("new-team-category", request)[0] is not None
    assert c.counts["uncategorized_over_max_categories"] == 1


def test_tenants_name_only_their_own_categories(redis_url, sqlite_url):
    c = core(redis_url, sqlite_url, gateway_tenants={
        "billing": {"keys": [digest(ALPHA)], "categories": ["billing-*"]},
        "support": {"keys": [digest(BETA)], "categories": ["support"]}})
    assert not c.tenant_refuses("billing-refunds", ALPHA) and not c.tenant_refuses("support", BETA)
    assert c.tenant_refuses("support", ALPHA)  # another team's category: served as sent
    assert c.tenant_refuses("billing-refunds", "sk-unknown") and c.tenant_refuses("support", None)
    assert c.counts["uncategorized_tenant_mismatch"] == 3
    assert not core(redis_url, sqlite_url).tenant_refuses("support", None)  # no tenants: anyone


def test_maintenance_forgets_idle_unlisted_categories_only(sqlite_url):
    engine = make_engine(sqlite_url)
    upgrade(engine)
    policy = parse_policy({"categories": {"support": {}}, "unknown_category_ttl_days": 7})
    ensure_categories(engine, policy)
    with session(engine) as s:
        for name in ("junk", "pinned-junk"):
            row = lock_category(s, policy.category(name))
            row.pinned = name == "pinned-junk"
            s.add(row)
        s.commit()
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=8)
    dry = maintenance.run(engine, None, policy, dry_run=True, now=later)
    assert dry["categories_would_forget"] == ["junk"]
    assert maintenance.run(engine, None, policy, now=later)["categories_forgotten"] == ["junk"]
    with session(engine) as s:
        assert sorted(s.get(Category, n) is not None for n in ("junk", "pinned-junk", "support")) == [
            False, True, True]
