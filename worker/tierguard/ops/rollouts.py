"""``tierguard rollout``: an operator starts, pauses, resumes, aborts and reads staged rollouts.

A rollout moves a category from the model in service to another of its rungs below the reference,
or to a priced model off its ladder (a challenger), in weighted steps
(:mod:`tierguard.engine.rollouts`; gated and moved on by the worker and beat,
:mod:`tierguard.pipeline.rollouts`). Each transition is written with its ``rollout`` event and the
splits' Redis copy rewritten at once (beat rewrites it on every pass too).
"""

from __future__ import annotations

from typing import Any

import redis as redis_lib
from sqlalchemy.engine import Engine
from sqlmodel import select

from tierguard.alerts.events import for_rollout
from tierguard.engine import rollouts as plan
from tierguard.errors import ConfigError
from tierguard.pipeline.rollouts import RolloutRefused, begin, publish_after
from tierguard.policy import Policy
from tierguard.store.db import session, utcnow
from tierguard.store.tables import Rollout


def start(engine: Engine, r: redis_lib.Redis | None, policy: Policy, category: str, model: str,
          steps: str, step_minutes: float, step_samples: int, actor: str) -> None:
    """A new rollout of ``category`` to ``model`` (one of its rungs, or a priced model such as a
    challenger: it holds at 100 % until the policy lists it), from the model in service."""
    cat = policy.category(category)
    problems = []
    try:
        parsed = plan.parse_steps(steps)
    except ValueError as err:
        problems.append(f"--steps: {err}")
    if model == cat.reference:
        problems.append(f"MODEL: {model} is {category}'s reference; a category goes back to it at once "
                        "(`tierguard pin`), not in steps")
    elif model not in cat.rungs and model not in policy.pricing:
        problems.append(f"MODEL: {model} is neither one of {category}'s models ({', '.join(cat.rungs)}) "
                        "nor priced in the policy's pricing")
    if step_minutes < 0 or step_samples < 0:
        problems.append("--step-minutes and --step-samples: must not be negative")
    if problems:
        raise ConfigError(problems)
    now = utcnow()
    with session(engine) as s:
        s.add(begin(s, policy, category, model, parsed, step_minutes, step_samples, actor, now))
        s.commit()
    publish_after(r, engine, True)


def act(engine: Engine, r: redis_lib.Redis | None, policy: Policy, category: str, action: str,
        actor: str) -> None:
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
        s.add(rollout)
        for_rollout(s, policy, rollout, now)
        s.commit()
    publish_after(r, engine, True)


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
