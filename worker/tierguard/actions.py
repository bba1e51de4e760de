"""Operator actions on routes: pin and unpin, each audited as a route change."""

from __future__ import annotations

import redis as redis_lib
from sqlalchemy.engine import Engine

from tierguard.db import RouteChange, session
from tierguard.policy import Policy
from tierguard.routes import change_route, lock_category, publish_quietly


def resolve_model(policy: Policy, category: str, model: str) -> str:
    cat = policy.category(category)
    return {"candidate": cat.candidate, "reference": cat.reference}.get(model, model)


def pin(engine: Engine, r: redis_lib.Redis | None, policy: Policy, category: str, model: str,
        *, reason: str, actor: str) -> RouteChange:
    """Route ``category`` to ``model`` and keep the automatic logic off it."""
    target = resolve_model(policy, category, model)
    with session(engine) as s:
        row = lock_category(s, policy.category(category))
        change = change_route(s, row, target, rule="pin", reason=reason or "pinned by operator",
                              actor=actor, pin=True)
        s.commit()
    publish_quietly(r, [row])
    return change


def unpin(engine: Engine, r: redis_lib.Redis | None, policy: Policy, category: str,
          *, reason: str, actor: str) -> RouteChange:
    """Hand ``category`` back to the automatic logic; the route stays where it is."""
    with session(engine) as s:
        row = lock_category(s, policy.category(category))
        change = change_route(s, row, row.routed_model, rule="unpin",
                              reason=reason or "unpinned by operator", actor=actor, pin=False)
        s.commit()
    publish_quietly(r, [row])
    return change
