"""The second stream: a rung's answers that fail their category's checks, watched by a CUSUM. Pure.

Every answer production checks (``escalate_on``) is one outcome of the rung that gave it:
escalated or not. Like the agreement stream's (:mod:`tierguard.engine.cusum`), the CUSUM tells a
healthy escalation rate (three points under ``max_escalation_rate`` as ``healthy`` is three
points over ``threshold``, but never under half of it) from the rate it is tuned to catch (one point
above it), within the category's ``false_flip_rate`` per ``false_flip_horizon`` outcomes.
Outcomes arrive counted per minute (production counts them; beat folds them): a minute's
``escalated`` of ``checked`` is applied as one step, ``s ← max(0, s + m·escalated − k·passed)`` —
the order within the minute in which the floor is reached least, so a minute never alarms where
its outcomes one by one might not have. No decision before ``min_samples`` outcomes; crossing
``h`` while the rung serves demotes it (rule ``escalations``). State per rung:
``{"s", "n", "e", "upto"}`` (``upto``: the last minute fed, epoch seconds).

A rung that does not serve gives no production answers; its shadow answers are checked instead
(:func:`shadow_checked`, ``"shadow": [n, failed, previous n, previous failed]`` in blocks of
:data:`SHADOW_BLOCK`), and :func:`held` keeps it from promotion while the failures of its last
200–400 checked shadow answers are above ``max_escalation_rate`` (or fewer than ``min_samples``
were checked): promotion needs both streams healthy.
"""

from __future__ import annotations

from dataclasses import dataclass

from tierguard.engine.cusum import Design, design
from tierguard.engine.detector import Decision


def escalation_design(max_rate: float, false_flip_rate: float, horizon: int) -> Design:
    """The CUSUM for a rung whose healthy escalation rate is ``max_rate − 0.03`` (never under
    ``max_rate / 2``), tuned to catch ``max_rate + 0.01`` (in the agreement design's terms:
    1 − those rates)."""
    healthy = max(max_rate - 0.03, max_rate / 2)
    return design(1 - healthy, 1 - min(max_rate + 0.01, 0.99), false_flip_rate, horizon)


SHADOW_BLOCK = 200


def counted(blocks: list[int] | None, failed: bool) -> list[int]:
    """``[n, failed, previous n, previous failed]`` after one more checked answer."""
    n, e, pn, pe = blocks or (0, 0, 0, 0)
    n, e = n + 1, e + int(failed)
    if n >= SHADOW_BLOCK:
        n, e, pn, pe = 0, 0, n, e
    return [n, e, pn, pe]


def shadow_checked(state: dict | None, failed: bool) -> dict:
    """A rung's state after one of its shadow answers was checked (``failed``: a check failed)."""
    return {**(state or {}), "shadow": counted((state or {}).get("shadow"), failed)}


@dataclass(frozen=True)
class Watch:
    max_rate: float
    false_flip_rate: float = 0.01
    horizon: int = 10_000
    min_samples: int = 50

    @property
    def design(self) -> Design:
        return escalation_design(self.max_rate, self.false_flip_rate, self.horizon)

    def feed(self, state: dict | None, minute: float, checked: int, escalated: int,
             serving: bool) -> tuple[dict, Decision | None]:
        """The rung's state after one minute's counts, and a demotion when it crossed ``h`` while
        serving (the state then restarts). A minute already fed is ignored."""
        st = {"s": 0, "n": 0, "e": 0, "upto": None, **(state or {})}
        if st["upto"] is not None and minute <= st["upto"] or checked <= 0:
            return st, None
        d = self.design
        escalated = min(escalated, checked)
        st["s"] = max(0, st["s"] + d.m * escalated - d.k * (checked - escalated))
        st["n"] += checked
        st["e"] += escalated
        st["upto"] = minute
        if not serving or st["n"] < self.min_samples or st["s"] < d.h:
            return st, None
        rate = escalated / checked
        reason = (f"escalation CUSUM reached {st['s']}/{d.h}: {escalated} of {checked} answers "
                  f"failed their checks in the last minute ({rate:.1%}; {st['e']} of {st['n']} since "
                  f"the watch began): evidence of a rate above max_escalation_rate "
                  f"{self.max_rate:.0%} (designed for ≤ {d.false_flip_rate:.2%} false flips per "
                  f"{d.horizon:,} answers at {1 - d.healthy:.1%})")
        numbers = {"statistic": st["s"], "h": d.h, "k": d.k, "m": d.m, "checked": st["n"],
                   "escalated": st["e"], "minute_checked": checked, "minute_escalated": escalated,
                   "max_escalation_rate": self.max_rate}
        decision = Decision("demote", "escalations", reason, 1 - st["e"] / st["n"], st["n"],
                            numbers=numbers)
        return {"s": 0, "n": 0, "e": 0, "upto": minute}, decision

    def held(self, state: dict | None) -> str | None:
        """Why the rung may not be promoted on its checked shadow answers, or None."""
        return self.held_by((state or {}).get("shadow"))

    def held_by(self, blocks: list[int] | None) -> str | None:
        """:meth:`held` for :func:`counted` blocks (a challenger's answers, say)."""
        n, e, pn, pe = blocks or (0, 0, 0, 0)
        total, failed = n + pn, e + pe
        if total < self.min_samples:
            return (f"only {total} of its shadow answers were checked (min_samples {self.min_samples}): "
                    "promotion needs its escalation rate too")
        if failed / total > self.max_rate:
            return (f"{failed} of its last {total} shadow answers fail the category's checks "
                    f"({failed / total:.1%} > max_escalation_rate {self.max_rate:.0%})")
        return None

    def statistic(self, state: dict | None) -> float:
        """The statistic as a share of ``h`` (1.0 demotes)."""
        return (state or {}).get("s", 0) / self.design.h
