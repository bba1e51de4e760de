"""``tierguard rollout``: an operator starts, pauses, resumes, aborts and reads staged rollouts.

A rollout moves a category from the model in service to another of its rungs in weighted steps
(:mod:`tierguard.engine.rollouts`; gated and moved on by the worker and beat,
:mod:`tierguard.pipeline.rollouts`). Each transition is written with its ``rollout`` event and the
splits' Redis copy rewritten at once (beat rewrites it on every pass too).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import redis as redis_lib
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from tierguard.alerts.events import for_rollout
from tierguard.engine import rollouts as plan
from tierguard.errors import ConfigError, TierguardError
from tierguard.policy import Policy
from tierguard.routing import rollouts as splits
from tierguard.routing.routes import lock_category
from tierguard.store.db import session, utcnow
from tierguard.store.tables import Rollout


class RolloutRefused(TierguardError):
    """The rollout command does not apply to the category's state."""


def start(engine: Engine, r: redis_lib.Redis | None, policy: Policy, category: str, model: str,
          steps: str, step_minutes: float, step_samples: int, actor: str) -> Rollout:
    """A new rollout of ``category`` to ``model`` (one of its rungs), from the model in service."""
    cat = policy.category(category)
    problems = []
    try:
        parsed = plan.parse_steps(steps)
    except ValueError as err:
        problems.append(f"--steps: {err}")
    if model not in cat.rungs:
        problems.append(f"MODEL: {model} is not one of {category}'s models ({', '.join(cat.rungs)}); "
                        "add it to the category's ladder first (`tierguard challenge status` says "
                        "whether it holds)")
    if step_minutes < 0 or step_samples < 0:
        problems.append("--step-minutes and --step-samples: must not be negative")
    if problems:
        raise ConfigError(problems)
    now = utcnow()
    with session(engine) as s:
        row = lock_category(s, cat)
        live = _live(s, category)
        if live is not None:
            raise RolloutRefused(f"{category}: a rollout of {live.model} is {live.status}; abort it first")
        if row.pinned or row.routed_model == model:
            raise RolloutRefused(f"{category} is pinned ({row.pin_reason}): unpin it first" if row.pinned
                                 else f"{category} is already served by {model}")
        rollout = s.get(Rollout, category) or Rollout(category=category, model=model, base=row.routed_model,
                                                      steps=list(parsed))
        for key, value in dict(model=model, base=row.routed_model, steps=list(parsed), step=0,
                               step_minutes=step_minutes, step_samples=step_samples, step_started_at=now,
                               samples=0, status="running", state={}, started_by=actor, created_at=now,
                               updated_at=now, reason=f"started by {actor}: {row.routed_model} → {model} "
                                                      f"in steps of {', '.join(map(str, parsed))} %").items():
            setattr(rollout, key, value)
        return _written(s, engine, r, policy, rollout, now)


def act(engine: Engine, r: redis_lib.Redis | None, policy: Policy, category: str, action: str,
        actor: str) -> Rollout:
    """``pause``, ``resume`` or ``abort`` the category's live rollout."""
    wanted = {"pause": ("running",), "resume": ("paused",), "abort": plan.LIVE}[action]
    now = utcnow()
    with session(engine) as s:
        rollout = s.exec(select(Rollout).where(Rollout.category == category).with_for_update()).first()
        if rollout is None or rollout.status not in wanted:
            have = "no rollout" if rollout is None else f"its last rollout is {rollout.status}"
            raise RolloutRefused(f"{category}: {have}; nothing to {action}")
        rollout.status = {"pause": "paused", "resume": "running", "abort": "aborted"}[action]
        rollout.reason = f"{action}d by {actor}" if action != "abort" else f"aborted by {actor}"
        if action == "resume":  # the step's minutes count again from now; its comparisons stay
            rollout.step_started_at = now
        rollout.updated_at = now
        return _written(s, engine, r, policy, rollout, now)


def _live(s: Session, category: str) -> Rollout | None:
    found = s.exec(select(Rollout).where(Rollout.category == category).with_for_update()).first()
    return found if found is not None and found.status in plan.LIVE else None


def _written(s: Session, engine: Engine, r: redis_lib.Redis | None, policy: Policy, rollout: Rollout,
             now: dt.datetime) -> Rollout:
    s.add(rollout)
    for_rollout(s, policy, rollout, now)
    s.commit()
    s.refresh(rollout)
    if r is not None:
        try:
            splits.publish(r, engine)
        except (redis_lib.RedisError, sa.exc.SQLAlchemyError):
            pass  # beat rewrites the copy on its next pass
    return rollout


def status(engine: Engine, policy: Policy, category: str | None = None) -> dict[str, Any]:
    """``{"rollouts": {CATEGORY: {...}}}``: every category's latest rollout."""
    with session(engine) as s:
        q = select(Rollout)
        if category:
            q = q.where(Rollout.category == category)
        found = list(s.exec(q.order_by(Rollout.category)))
    out = {}
    for x in found:
        cat = policy.category(x.category)
        out[x.category] = {
            "model": x.model, "base": x.base, "status": x.status, "step": x.step + 1, "steps": x.steps,
            "weight": plan.weight(x.steps, x.step, x.status), "samples": x.samples,
            "step_minutes": x.step_minutes, "step_samples": x.step_samples,
            "step_started_at": x.step_started_at.isoformat(), "statistic": cat.engine.statistic(x.state),
            "reason": x.reason, "started_by": x.started_by}
    return {"rollouts": out}
