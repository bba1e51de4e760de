"""A staged rollout of one category to a new model, step by step, gated by its own evidence. Pure.

Production calls of the category are split by weight between the model in service (``base``)
and the new ``model``: at step ``i`` a call goes to the new model with probability
``steps[i] / 100``. Every comparison of the new model's answer with the reference's feeds the
new model's own agreement CUSUM (the category's demotion design, :class:`~tierguard.engine.
detector.Engine` watching a rung in service); crossing it rolls back at once. A step advances
once it has lasted ``step_minutes`` and gathered ``step_samples`` comparisons; the last step
(100 %) makes the new model the route — once the policy lists it for the category (a challenger
rolled out holds at 100 % until it is added to the ladder). Statuses: ``running``, ``paused`` (no
split), ``done``, ``rolled_back``, ``aborted``. Every decision carries its reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from tierguard.engine.detector import Engine, Situation

DEFAULT_STEPS = (5, 25, 50, 100)
LIVE = ("running", "paused")


def parse_steps(text: str) -> tuple[int, ...]:
    """``"5,25,50,100"`` as steps in percent (ValueError naming the problem)."""
    try:
        steps = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"{text!r} is not a comma-separated list of whole percentages") from None
    if not steps or any(not 0 < s <= 100 for s in steps):
        raise ValueError(f"{text!r}: every step is a percentage above 0 and at most 100")
    if any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
        raise ValueError(f"{text!r}: the steps must increase")
    if steps[-1] != 100:
        raise ValueError(f"{text!r}: the last step must be 100 (it makes the new model the route)")
    return steps


@dataclass(frozen=True)
class Move:
    """What a rollout does next: ``advance`` (to ``step``), ``finish``, ``roll_back`` or ``wait``."""

    action: str
    reason: str
    step: int | None = None


def weight(steps: list[int] | tuple[int, ...], step: int, status: str) -> float:
    """The share of the category's calls the new model gets now."""
    return steps[step] / 100 if status == "running" else 0.0


def fed(engine: Engine, state: dict, agree: bool, now: float) -> tuple[dict, Move | None]:
    """The new model's CUSUM after one comparison; a ``roll_back`` when it crossed."""
    state, decision = engine.update(state or {}, agree, Situation("candidate", False, now))
    if decision.action != "demote":
        return state, None
    return state, Move("roll_back", f"the new model's agreement CUSUM crossed on its share of the calls: "
                                    f"{decision.reason}")


def due(steps: list[int] | tuple[int, ...], step: int, started: float, samples: int, now: float,
        step_minutes: float, step_samples: int, listed: bool = True) -> Move:
    """Whether a running rollout's step is over: ``advance``, ``finish`` (the last) or ``wait``;
    ``listed``: whether the policy lists the new model for the category (a route must be one of its
    models: until it does, the last step holds at 100 %)."""
    waited, minutes_left = now - started, step_minutes * 60 - (now - started)
    if minutes_left > 0 or samples < step_samples:
        return Move("wait", f"step {step + 1}/{len(steps)} ({steps[step]} %): {samples} of {step_samples} "
                            f"comparisons, {max(minutes_left, 0) / 60:.1f} of {step_minutes:g} min left")
    why = (f"step {step + 1}/{len(steps)} ({steps[step]} %) held for {waited / 60:.1f} min and "
           f"{samples} comparisons")
    if step + 1 == len(steps):
        if not listed:
            return Move("wait", f"{why}; held at 100 % until the policy lists the new model for the "
                                "category (add it to the ladder): a route is one of its models")
        return Move("finish", f"{why}: the new model serves the category")
    return Move("advance", f"{why}: on to {steps[step + 1]} %", step + 1)
