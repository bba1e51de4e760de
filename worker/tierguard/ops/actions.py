"""Operator actions on routes: pin, unpin, promote; each audited as a route change."""

from __future__ import annotations

import datetime as dt

import redis as redis_lib
from sqlalchemy.engine import Engine

from tierguard.alerts.events import for_route_change
from tierguard.db import RouteChange, session, utcnow
from tierguard.engine.detector import note_change
from tierguard.errors import TierguardError
from tierguard.policy import Policy
from tierguard.routes import change_route, lock_category, publish_quietly


class ActionRefused(TierguardError):
    """The operator action does not apply to the category's current state."""


def resolve_model(policy: Policy, category: str, model: str) -> str:
    cat = policy.category(category)
    return {"candidate": cat.candidate, "reference": cat.reference}.get(model, model)


def pin(engine: Engine, r: redis_lib.Redis | None, policy: Policy, category: str, model: str,
        *, reason: str, actor: str, until: dt.datetime | None = None) -> RouteChange:
    """Route ``category`` to ``model``; the automatic logic leaves it alone until unpinned or ``until``."""
    if until is not None and until <= utcnow():
        raise ActionRefused(f"--until {until.isoformat()} is in the past")
    target = resolve_model(policy, category, model)
    with session(engine) as s:
        row = lock_category(s, policy.category(category))
        change = change_route(s, row, target, rule="pin", reason=reason or "pinned by operator",
                              actor=actor, pin=True, until=until)
        s.commit()
    publish_quietly(r, [row])
    return change


def unpin(engine: Engine, r: redis_lib.Redis | None, policy: Policy, category: str,
          *, reason: str, actor: str) -> RouteChange:
    """Hand ``category`` back to the automatic logic; the route stays where it is."""
    with session(engine) as s:
        row = lock_category(s, policy.category(category))
        if not row.pinned:
            raise ActionRefused(f"{category} is not pinned")
        change = change_route(s, row, row.routed_model, rule="unpin",
                              reason=reason or "unpinned by operator", actor=actor, pin=False)
        s.commit()
    publish_quietly(r, [row])
    return change


def promote(engine: Engine, r: redis_lib.Redis | None, policy: Policy, category: str,
            *, reason: str, actor: str, force: bool = False) -> RouteChange:
    """Serve ``category`` by its candidate again; refused unless eligible (or ``force``)."""
    cat = policy.category(category)
    with session(engine) as s:
        row = lock_category(s, cat)
        if row.pinned:
            raise ActionRefused(f"{category} is pinned ({row.pin_reason}): unpin it first")
        if row.routed_model == row.candidate:
            raise ActionRefused(f"{category} is already served by its candidate {row.candidate}")
        eligible = bool((row.detector_state or {}).get("eligible"))
        if not eligible and not force:
            raise ActionRefused(f"{category} is not eligible for promotion yet "
                                "(see `tierguard status`); --force overrides")
        row.detector_state = note_change(dict(row.detector_state or {}), utcnow().timestamp(),
                                         cat.flap_window_hours * 3600)
        change = change_route(s, row, row.candidate, rule="promotion", actor=actor,
                              reason=reason or ("promoted by operator" + ("" if eligible else
                                                                          " (forced, not eligible)")))
        for_route_change(s, policy, change, "promoted")
        s.commit()
    publish_quietly(r, [row])
    return change
