"""Beat's escalation watch: each rung's checked answers (folded per minute from production's counters)
through its escalation CUSUM (:mod:`tierguard.engine.escalations`), and a rung that breaks too
many answers demoted, audited and paged like an agreement demotion.

:func:`watch` runs after the traffic fold in beat's monitor task. Per category with
``escalate_on``, under the category's row lock, it feeds every folded minute not fed before
(``category.escalation_state``, per rung), in order; a crossing while the rung serves (and is not
pinned) moves the route to the reference, or with ``demote_to: next`` to the cheapest eligible
rung above (rule ``escalations``; observe mode writes a "would flip" row); a running staged
rollout's new model is watched as serving, and a crossing rolls the rollout back (rule
``rollout``). The demotion counts in the flap guard as the agreement engine's do (noted in the
rung's detector state, a ladder's every rung stamped); the ``flap_limit``-th change within
``flap_window_hours`` pins the category to its reference (rule ``flap_guard``). The agreement
engine sees the new route on its next sample, as after any route change.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections import defaultdict

import redis as redis_lib
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from tierguard import metrics
from tierguard.alerts.events import for_route_change
from tierguard.engine.detector import Decision, note_change
from tierguard.engine.fingerprints import kept
from tierguard.pipeline.recorder import apply_decision
from tierguard.pipeline.rollouts import publish_after, roll_back
from tierguard.policy import CategoryPolicy, Policy
from tierguard.routing.routes import lock_category, publish_quietly
from tierguard.store.db import session, utcnow
from tierguard.store.tables import Category, Rollout, RouteChange, Traffic
from tierguard.store.traffic import ESCALATED

log = logging.getLogger(__name__)
Minute = tuple[str, float, int, int]  # model, epoch seconds, checked, escalated


def _minutes(engine: Engine, since: dt.datetime) -> dict[str, list[Minute]]:
    t = Traffic
    escalated = sum((getattr(t, name) for name in ESCALATED), sa.literal(0))
    with session(engine) as s:
        rows = s.execute(sa.select(t.category, t.model, t.minute, t.checked, escalated)
                         .where(t.checked > 0, t.minute >= since).order_by(t.minute, t.model)).all()
    out: dict[str, list[Minute]] = defaultdict(list)
    for category, model, minute, checked, failed in rows:
        at = minute if minute.tzinfo else minute.replace(tzinfo=dt.UTC)
        out[category].append((model, at.timestamp(), int(checked), int(failed or 0)))
    return out


def _noted(cat: CategoryPolicy, row: Category, model: str, target: str, now: float) -> bool:
    """The demotion noted in the flap guard's history (``row.detector_state``); whether it is the
    ``flap_limit``-th change within the window (the category is then pinned to its reference)."""
    config, state = cat.engine_config, dict(row.detector_state or {})
    rungs = dict(state.get("rungs") or {}) if cat.laddered else None
    st = (rungs.get(model) if rungs is not None else state) or {}
    pin = len([t for t in st.get("changes", []) if now - t < config.flap_window_s]) + 1 >= config.flap_limit
    noted = note_change(st, now, config.flap_window_s)
    if rungs is None:
        row.detector_state = kept(state, noted)
    else:
        rungs = cat.ladder_engine.stamp({**rungs, model: noted}, now, model)
        row.detector_state = kept(state, cat.ladder_engine.mirror({**state, "rungs": rungs}, target))
    return pin


def _demote(s: Session, policy: Policy, cat: CategoryPolicy, row: Category, model: str,
            decision: Decision) -> RouteChange | None:
    target = (cat.ladder_engine.next_up((row.detector_state or {}).get("rungs") or {}, model)
              if cat.laddered else cat.reference)
    applied = cat.mode != "observe"
    before = row.detector_state
    pin = applied and _noted(cat, row, model, target, utcnow().timestamp())
    if pin:
        target = cat.reference
        decision = dataclasses.replace(decision, rule="flap_guard", pin=True, reason=(
            f"{decision.reason}; flap guard: {cat.flap_limit} changes within "
            f"{cat.flap_window_hours:g} h, pinned"))
    decision = dataclasses.replace(decision, applied=applied,
                                   reason=f"{model} breaks too many answers, so {target} serves: "
                                          f"{decision.reason}")
    change = apply_decision(s, row, decision, None, target)
    if change is None:  # lost a race: nothing changed, nothing to note in the flap guard
        row.detector_state = before
    elif change.applied:
        for_route_change(s, policy, change, "flap_guard" if pin else "demoted")
    return change


def _fed(s: Session, policy: Policy, cat: CategoryPolicy, row: Category, rollout: Rollout | None,
        states: dict, minute: Minute) -> RouteChange | None:
    """One folded minute of one model through its escalation CUSUM (``states`` updated); the
    demotion, or a running rollout's roll-back, it made."""
    model, at, checked, failed = minute
    rolling = rollout is not None and rollout.status == "running" and model == rollout.model
    serving = (row.routed_model == model and not row.pinned) or rolling
    states[model], decision = cat.escalation_watch.feed(states.get(model), at, checked, failed, serving)
    if decision is None:
        return None
    if rolling:  # a staged rollout's new model: rolled back
        why = f"its answers fail their checks: {decision.reason}"
        return roll_back(s, policy, rollout, why, None, utcnow())  # type: ignore[arg-type]
    return _demote(s, policy, cat, row, model, decision)


def _category(engine: Engine, policy: Policy, cat: CategoryPolicy, minutes: list[Minute]
              ) -> tuple[Category, list[RouteChange]]:
    changes = []
    with session(engine) as s:
        row = lock_category(s, cat)
        rollout = s.exec(select(Rollout).where(Rollout.category == cat.name, Rollout.status == "running")
                         .with_for_update()).first()
        states = dict(row.escalation_state or {})
        for minute in minutes:
            change = _fed(s, policy, cat, row, rollout, states, minute)
            if change is not None:
                changes.append(change)
        row.escalation_state = states
        s.add(row)
        s.commit()
        s.refresh(row)
    return row, changes


def watch(engine: Engine, r: redis_lib.Redis | None, policy: Policy, now: dt.datetime | None = None,
          days: float = 1.0) -> list[RouteChange]:
    """Feed the folded minutes of the last ``days`` to every checked category's rungs; the route
    changes made (applied or, in observe mode, not)."""
    found = _minutes(engine, (now or utcnow()) - dt.timedelta(days=days))
    changes: list[RouteChange] = []
    moved: list[Category] = []
    for name in sorted(found):
        cat = policy.category(name)
        if not cat.escalate_on:
            continue
        row, made = _category(engine, policy, cat, found[name])
        changes += made
        if any(c.applied for c in made):
            moved.append(row)
    for change in changes:
        log.warning("category %s: %s %s -> %s: %s", change.category,
                    "changed" if change.applied else "would change", change.from_model, change.to_model,
                    change.reason)
        if change.applied:
            metrics.ROUTE_CHANGES.labels(change.category, change.rule, change.to_model).inc()
    publish_quietly(r, moved)
    publish_after(r, engine, any(c.rule == "rollout" for c in changes))
    return changes
