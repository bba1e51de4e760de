"""Beat's retirement check (in the monitor task): the policy's ``retirements`` and the API's last
model list (:mod:`tierguard.pipeline.listed_models`) against every category's models in use, the
decisions made by :mod:`tierguard.engine.retirements`.

A model in use within ``retirement_warning_days`` of its date, past it, or not listed by the API
raises ``model_retiring`` once per model and ISO week (event key ``model_retiring:MODEL:YYYY-Www``),
naming each category's replacement and, when one is eligible, its challenger.
A category whose route is on a retired model moves to the recommended replacement under its row
lock, audited (rule ``retirement``, reason naming the date; a pin on it is lifted and the reason
says so) with a ``model_retired`` event; in observe mode one "would change" row is written instead.
A retired rung is never promoted to: the recorder holds it (:func:`tierguard.engine.retirements.
retired_on`), and ``tierguard promote``/``pin`` refuse it.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

import redis as redis_lib
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from tierguard import metrics
from tierguard.alerts.events import for_model_retiring, for_route_change
from tierguard.engine import challengers as evidence
from tierguard.engine import retirements as decide
from tierguard.engine.detector import Decision
from tierguard.engine.fingerprints import kept
from tierguard.otlp import exporter as otlp
from tierguard.pipeline import listed_models, rollouts
from tierguard.pipeline.recorder import apply_decision
from tierguard.policy import CategoryPolicy, Policy
from tierguard.routing.challengers import challengers_of
from tierguard.routing.challengers import rows as challenger_rows
from tierguard.routing.routes import lock_category, publish_quietly
from tierguard.store.db import session, utcnow
from tierguard.store.tables import Category, ChallengerState, RouteChange

log = logging.getLogger(__name__)
RULE = "retirement"


@dataclass
class Checked:
    """One check: the events it raised and the route changes it made (or would make)."""

    events: int = 0
    changes: list[RouteChange] = field(default_factory=list)


def usage(cat: CategoryPolicy, row: Category | None, challengers: tuple[str, ...] = (),
          eligible: tuple[str, ...] = ()) -> decide.Usage:
    """A category's models in use, as the decision logic reads them (no row yet: its initial route);
    its active ``challengers`` and those ``eligible`` against the reference."""
    routed = row.routed_model if row else cat.initial_route
    states = decide.rung_states(cat.rungs, routed, (row.detector_state if row else None) or {}, cat.laddered)
    return decide.Usage(cat.name, cat.rungs, routed, bool(row and row.pinned), states, challengers,
                        eligible)


def _challengers(engine: Engine, policy: Policy, names: list[str]
                 ) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    """Per category: its active challengers, and those eligible against the reference and not worse."""
    found = challenger_rows(engine)
    with session(engine) as s:
        states = {(x.category, x.model): x.state for x in s.exec(select(ChallengerState))}
    out = {}
    for name in names:
        cat = policy.category(name)
        active = tuple(m for m, _ in challengers_of(policy, found, name))
        good = tuple(m for m in active if evidence.eligible(states.get((name, m))) and evidence.verdict(
            states.get((name, m)), cat.reference, cat.threshold, cat.min_samples).name != "worse")
        out[name] = (active, good)
    return out


def check(engine: Engine, r: redis_lib.Redis | None, policy: Policy, now: dt.datetime | None = None
          ) -> Checked:
    """Raise this week's notices and move every category off a retired route."""
    today = (now or utcnow()).date()
    listed = listed_models.kept(r)
    if not policy.retirements and listed is None:
        return Checked()
    with session(engine) as s:
        rows = {row.name: row for row in s.exec(select(Category))}
    names = sorted(set(rows) | set(policy.categories))  # the policy's, with or without a row yet
    challenged = _challengers(engine, policy, names)
    notices, moves = decide.check((usage(policy.category(name), rows.get(name), *challenged[name])
                                   for name in names),
                                  policy.retirements, policy.retirement_warning_days, today,
                                  listed.ids if listed else None, listed.read_at if listed else None)
    done = Checked()
    moved = []
    for move in moves:
        change, row, event = _move(engine, policy, move)
        if change is not None:
            done.changes.append(change)
            done.events += event
            moved += [row] if change.applied else []
    done.events += _announce(engine, policy, notices, decide.iso_week(today))
    done.events += rollouts.abort_retired(engine, r, policy, today)
    publish_quietly(r, moved)
    _observe(done.changes)
    return done


def _move(engine: Engine, policy: Policy, move: decide.Move) -> tuple[RouteChange | None, Category, bool]:
    """One category off its retired route, in one transaction under its row lock (a route that moved
    meanwhile is left alone; observe mode records it once): the change, the row, whether an event
    was raised."""
    cat = policy.category(move.category)
    with session(engine) as s:
        row = lock_category(s, cat)
        if row.routed_model != move.model or (cat.mode == "observe" and _recorded(s, move)):
            return None, row, False
        decision = Decision("demote", RULE, move.reason, None, 0, applied=cat.mode != "observe",
                            numbers={"retired_on": move.date.isoformat()})  # type: ignore[dict-item]
        if cat.laddered:
            state = dict(row.detector_state or {})
            row.detector_state = kept(state, cat.ladder_engine.mirror(state, move.target))
        change = apply_decision(s, row, decision, None, move.target, unpin=move.unpin and decision.applied)
        event = change is not None and change.applied and \
            for_route_change(s, policy, change, "model_retired") is not None
        s.commit()
        s.refresh(row)
    return change, row, event


def _recorded(s: Session, move: decide.Move) -> bool:
    """Whether observe mode already wrote this move's "would change" row."""
    q = select(RouteChange.id).where(RouteChange.category == move.category, RouteChange.rule == RULE,
                                     RouteChange.from_model == move.model,
                                     RouteChange.to_model == move.target,
                                     RouteChange.applied == False)  # noqa: E712
    return s.exec(q).first() is not None


def _announce(engine: Engine, policy: Policy, notices: list[decide.Notice], week: str) -> int:
    """This week's ``model_retiring`` events not raised yet; how many are new."""
    new = []
    with session(engine) as s:
        for n in notices:
            numbers = {"date": n.date.isoformat() if n.date else None, "days_left": n.days_left,
                       "listed": not n.unlisted, "categories": n.uses}
            if for_model_retiring(s, policy, n.model, n.reason, week, numbers) is not None:
                new.append(n)
        s.commit()
    for n in new:
        log.warning("model_retiring: %s", n.reason)
    return len(new)


def _observe(changes: list[RouteChange]) -> None:
    for change in changes:
        log.warning("category %s: %s %s -> %s: %s", change.category,
                    "changed" if change.applied else "would change", change.from_model, change.to_model,
                    change.reason)
        if change.applied:
            metrics.ROUTE_CHANGES.labels(change.category, RULE, change.to_model).inc()
    otlp.recorded(changes=[c for c in changes if c.applied])
