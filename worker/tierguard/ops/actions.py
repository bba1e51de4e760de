"""Operator actions on routes: pin, unpin, promote; each audited as a route change. A retired model
(the policy's ``retirements``) is never pinned or promoted to."""

from __future__ import annotations

import datetime as dt
from typing import Any

import redis as redis_lib
from sqlalchemy.engine import Engine

from tierguard.alerts.events import for_route_change
from tierguard.engine.retirements import retired_on
from tierguard.errors import TierguardError
from tierguard.otlp import exporter as otlp
from tierguard.policy import Policy
from tierguard.routing.routes import change_route, lock_category, noted, publish_quietly
from tierguard.store.db import session, utcnow
from tierguard.store.tables import RouteChange


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
    if why := retired_on(policy.retirements, target, utcnow().date()):
        raise ActionRefused(f"{category}: {why}; pin it to a model still served")
    with session(engine) as s:
        row = lock_category(s, policy.category(category))
        change = change_route(s, row, target, rule="pin", reason=reason or "pinned by operator",
                              actor=actor, pin=True, until=until)
        s.commit()
    publish_quietly(r, [row], force=True)  # whatever Redis held: the database's route
    otlp.recorded(changes=[change])
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
    publish_quietly(r, [row], force=True)  # whatever Redis held: the database's route
    otlp.recorded(changes=[change])
    return change


def promote(engine: Engine, r: redis_lib.Redis | None, policy: Policy, category: str,
            *, reason: str, actor: str, force: bool = False, to: str | None = None) -> RouteChange:
    """Serve ``category`` one rung cheaper (its candidate, for two models), or by ``to``; refused
    unless that rung is eligible (or ``force``)."""
    cat = policy.category(category)
    with session(engine) as s:
        row = lock_category(s, cat)
        if row.pinned:
            raise ActionRefused(f"{category} is pinned ({row.pin_reason}): unpin it first")
        target = _promotion_target(cat, row.routed_model, to and resolve_model(policy, category, to))
        if why := retired_on(policy.retirements, target, utcnow().date()):
            raise ActionRefused(f"{category}: {why}; it is never promoted to, even with --force")
        state = dict(row.detector_state or {})
        rung_state = (state.get("rungs") or {}).get(target) or {} if cat.laddered else state
        eligible = bool(rung_state.get("eligible"))
        if not eligible and not force:
            what = f"{category}: {target}" if cat.laddered else category
            raise ActionRefused(f"{what} is not eligible for promotion yet "
                                "(see `tierguard status`); --force overrides")
        now = utcnow().timestamp()
        row.detector_state = noted(cat, state, target, now)
        said = f"promoted by operator to {target}" if cat.laddered else "promoted by operator"
        change = change_route(s, row, target, rule="promotion", actor=actor,
                              reason=reason or (said + ("" if eligible else " (forced, not eligible)")))
        for_route_change(s, policy, change, "promoted")
        s.commit()
    publish_quietly(r, [row], force=True)  # whatever Redis held: the database's route
    otlp.recorded(changes=[change])
    return change



def _promotion_target(cat: Any, serving: str, to: str | None) -> str:
    rungs = cat.rungs
    if to is not None:
        if to not in rungs:
            raise ActionRefused(f"{cat.name}: {to} is not a model of its ladder ({', '.join(rungs)})")
        if serving in rungs and rungs.index(to) >= rungs.index(serving):
            raise ActionRefused(f"{cat.name}: {to} is not cheaper than {serving}, which serves it")
        return to
    if serving == rungs[0]:
        what = "cheapest rung" if cat.laddered else "candidate"
        raise ActionRefused(f"{cat.name} is already served by its {what} {serving}")
    return rungs[rungs.index(serving) - 1] if serving in rungs else rungs[0]
