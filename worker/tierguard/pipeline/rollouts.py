"""Staged rollouts on the worker side: the new model's comparisons gate each step, beat moves them on.

:func:`record` runs in the recording transaction: every inserted comparison of a running
rollout's new model with the reference feeds its agreement CUSUM
(:func:`tierguard.engine.rollouts.fed`) and counts for its step; a crossing rolls it back at once
(status ``rolled_back``, an audited ``route_change`` from the new model to the one in service,
rule ``rollout``, paged as a demotion). :func:`advance` is beat's: a step that has lasted its
minutes and gathered its comparisons moves on (a ``rollout`` event); the last one makes the new
model the route (audited, rule ``rollout``); a rollout whose category was moved or pinned under
it is aborted. Both rewrite the splits' Redis copy after commit.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping

import redis as redis_lib
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from tierguard.alerts.events import for_rollout, for_route_change
from tierguard.engine import rollouts as plan
from tierguard.errors import TierguardError
from tierguard.pipeline.results import Result
from tierguard.policy import Policy
from tierguard.routing import rollouts as splits
from tierguard.routing.routes import change_route, lock_category, noted
from tierguard.store.db import session, utcnow
from tierguard.store.tables import Rollout, RouteChange

log = logging.getLogger(__name__)


def record(s: Session, policy: Policy, results: list[Result], inserted: set[str],
           now: dt.datetime, routes: Mapping[str, str] | None = None) -> list[RouteChange]:
    """Feed running rollouts their new model's comparisons; the roll-backs made. ``routes``
    (category -> its route, read under its row lock in this transaction): a rollout is looked
    up only for a category with a comparison the route did not serve against the reference (a
    rollout's share; the route is its base), so a transaction without one reads no rollout."""
    names = {x.job.category for x in results if x.kind == "shadow" and x.verdict is not None
             and (routes is None or _a_share(policy, routes, x))}
    if not names:
        return []
    found = list(s.exec(select(Rollout).where(Rollout.category.in_(sorted(names)),
                                              Rollout.status == "running")
                        .order_by(Rollout.category).with_for_update()))
    made = []
    for rollout in found:
        cat = policy.category(rollout.category)
        for x in results:
            job = x.job
            if (x.kind != "shadow" or x.verdict is None or job.job_id not in inserted
                    or job.category != rollout.category or job.served_model != rollout.model
                    or job.shadow_model != cat.reference or rollout.status != "running"):
                continue
            rollout.samples += 1
            rollout.state, move = plan.fed(cat.engine, rollout.state, x.verdict.agree, now.timestamp())
            if move is not None:
                made.append(roll_back(s, policy, rollout, move.reason, x.job.job_id, now))
        rollout.updated_at = now
        s.add(rollout)
    return made


def _a_share(policy: Policy, routes: Mapping[str, str], x: Result) -> bool:
    """Whether ``x`` may be a rollout's share: not served by its category's route, compared with
    the reference."""
    job = x.job
    return (job.served_model != routes.get(job.category)
            and job.shadow_model == policy.category(job.category).reference)


def roll_back(s: Session, policy: Policy, rollout: Rollout, reason: str, job_id: str | None,
              now: dt.datetime) -> RouteChange:
    """End ``rollout`` now (its split gone): audited from the new model back to the one in service,
    rule ``rollout``, paged as a demotion."""
    rollout.status, rollout.reason = "rolled_back", reason
    change = RouteChange(category=rollout.category, from_model=rollout.model, to_model=rollout.base,
                         rule="rollout", reason=f"rollout of {rollout.model} rolled back to "
                                                f"{rollout.base} at step {rollout.step + 1} "
                                                f"({rollout.steps[rollout.step]} %): {reason}",
                         samples=rollout.samples, numbers={"step": rollout.step + 1,
                                                           "steps": rollout.steps},
                         actor="auto", trigger_job_id=job_id, created_at=now)
    s.add(change)
    for_route_change(s, policy, change, "demoted")
    log.warning("category %s: %s", rollout.category, change.reason)
    return change


def advance(engine: Engine, r: redis_lib.Redis | None, policy: Policy,
            now: dt.datetime | None = None) -> list[str]:
    """Move every running rollout whose step is over; what happened, one line each."""
    now = now or utcnow()
    with session(engine) as s:
        names = list(s.exec(select(Rollout.category).where(Rollout.status == "running")))
    done = []
    for name in sorted(names):
        with session(engine) as s:
            line = _advance_one(s, policy, name, now)
            s.commit()
        if line:
            done.append(line)
    if r is not None:
        try:
            splits.publish(r, engine)
        except (redis_lib.RedisError, sa.exc.SQLAlchemyError) as err:
            log.warning("cannot publish the rollouts' splits yet: %s", err)
    return done


def _advance_one(s: Session, policy: Policy, name: str, now: dt.datetime) -> str | None:
    cat = policy.category(name)
    row = lock_category(s, cat)
    rollout = s.exec(select(Rollout).where(Rollout.category == name).with_for_update()).one()
    if rollout.status != "running":
        return None
    if row.routed_model != rollout.base or row.pinned:
        why = "pinned" if row.pinned else f"the route moved to {row.routed_model}"
        return _end(s, policy, rollout, "aborted", f"aborted: {why} under the rollout", now)
    started = rollout.step_started_at
    started = started if started.tzinfo else started.replace(tzinfo=dt.UTC)
    move = plan.due(rollout.steps, rollout.step, started.timestamp(), rollout.samples, now.timestamp(),
                    rollout.step_minutes, rollout.step_samples, rollout.model in cat.rungs)
    if move.action == "wait":
        if move.reason != rollout.reason and "held at 100 %" in move.reason:  # said once
            return _end(s, policy, rollout, "running", move.reason, now)
        return None
    if move.action == "advance":
        rollout.step, rollout.samples, rollout.step_started_at = move.step, 0, now
        return _end(s, policy, rollout, "running", move.reason, now)
    row.detector_state = noted(cat, dict(row.detector_state or {}), rollout.model, now.timestamp())
    change = change_route(s, row, rollout.model, rule="rollout", reason=f"rollout finished: {move.reason}",
                          samples=rollout.samples, numbers={"steps": rollout.steps})
    for_route_change(s, policy, change, "promoted")
    return _end(s, policy, rollout, "done", move.reason, now)


def begin(s: Session, policy: Policy, category: str, model: str, steps: tuple[int, ...],
          step_minutes: float, step_samples: int, actor: str, now: dt.datetime) -> Rollout:
    """A new rollout of ``category`` (its row locked) to ``model`` from the model in service, with
    its ``rollout`` event (RolloutRefused while another is live, or when pinned or served by it)."""
    row = lock_category(s, policy.category(category))
    rollout = s.exec(select(Rollout).where(Rollout.category == category).with_for_update()).first()
    if rollout is not None and rollout.status in plan.LIVE:
        raise RolloutRefused(f"{category}: a rollout of {rollout.model} is {rollout.status}; abort it first")
    if row.pinned or row.routed_model == model:
        raise RolloutRefused(f"{category} is pinned ({row.pin_reason}): unpin it first" if row.pinned
                             else f"{category} is already served by {model}")
    rollout = rollout or Rollout(category=category, model=model, base=row.routed_model, steps=list(steps))
    for key, value in dict(model=model, base=row.routed_model, steps=list(steps), step=0,
                           step_minutes=step_minutes, step_samples=step_samples, step_started_at=now,
                           samples=0, state={}, started_by=actor, created_at=now).items():
        setattr(rollout, key, value)
    _end(s, policy, rollout, "running", f"started by {actor}: {row.routed_model} → {model} in steps of "
                                       f"{', '.join(map(str, steps))} %", now)
    return rollout


class RolloutRefused(TierguardError):
    """The rollout command does not apply to the category's state."""


def _end(s: Session, policy: Policy, rollout: Rollout, status: str, reason: str, now: dt.datetime) -> str:
    """A transition written (status, reason) with its ``rollout`` event."""
    rollout.status, rollout.reason, rollout.updated_at = status, reason, now
    s.add(rollout)
    for_rollout(s, policy, rollout, now)
    return f"{rollout.category}: {reason}"


def abort_retired(engine: Engine, r: redis_lib.Redis | None, policy: Policy, today: dt.date) -> int:
    """Abort every live rollout to a model retired by ``today`` (its split gone); how many."""
    retired = {m for m, date in policy.retirements.items() if date <= today}
    if not retired:
        return 0
    now, done = utcnow(), 0
    with session(engine) as s:
        for rollout in s.exec(select(Rollout).where(Rollout.status.in_(plan.LIVE),
                                                    Rollout.model.in_(sorted(retired))).with_for_update()):
            _end(s, policy, rollout, "aborted", f"aborted: {rollout.model} retired on "
                                                f"{policy.retirements[rollout.model].isoformat()}", now)
            done += 1
        s.commit()
    publish_after(r, engine, done > 0)
    return done


def publish_after(r: redis_lib.Redis | None, engine: Engine, changed: bool) -> None:
    """After a commit that started or rolled back a rollout: the splits' copy rewritten (quietly;
    beat heals it too)."""
    if r is None or not changed:
        return
    try:
        splits.publish(r, engine)
    except (redis_lib.RedisError, sa.exc.SQLAlchemyError) as err:
        log.warning("cannot publish the rollouts' splits yet (beat will): %s", err)
