"""Ladders: one detector state per rung, every decision naming the rung it moves to. No I/O.

A ladder is its models cheapest first, the reference last. Every rung below the
reference is measured against the reference with the two-model engine
(:mod:`tierguard.engine.detector`), from its own point of view:

- the **rung in service** is watched by its CUSUM; crossing ``h`` demotes it, to the
  reference (``demote_to: reference``) or to the cheapest rung above it that is
  eligible on its own evidence (``demote_to: next``); the failed rung is marked
  ``failed`` until it is eligible again;
- a **rung not in service** gathers evidence (probes, or shadows while the reference
  serves): eligible when its Wilson lower bound clears ``promote_threshold``. Only the
  rung just below the one in service may be promoted (one rung cheaper at a time, with
  ``auto_promote``, its cooldown and flap guard); the others are only marked eligible.

Every route change counts for every rung's cooldown and flap guard: the category moved.

A two-rung ladder is exactly the two-model engine; callers keep using it directly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from tierguard.engine.detector import Decision, Engine, Situation, restart_promotion

STATES = ("serving", "eligible", "watching", "demoted")


@dataclass(frozen=True)
class Move:
    """One outcome's result: the rung's decision and the model the route goes to (or None)."""

    decision: Decision
    rung: str
    target: str | None


def rung_state(states: dict[str, dict], serving: str, rung: str) -> str:
    """One of :data:`STATES` for ``rung``, from a ladder's stored per-rung states."""
    if rung == serving:
        return "serving"
    st = states.get(rung) or {}
    if st.get("failed"):
        return "demoted"
    return "eligible" if st.get("eligible") else "watching"


class Ladder:
    def __init__(self, rungs: tuple[str, ...], engine: Engine, manual: Engine, demote_to: str):
        """``manual`` is ``engine`` without auto-promotion (for rungs that may not be promoted)."""
        assert len(rungs) >= 2
        self.rungs, self.engine, self.manual, self.demote_to = rungs, engine, manual, demote_to

    @property
    def reference(self) -> str:
        return self.rungs[-1]

    def _index(self, model: str) -> int:
        return self.rungs.index(model) if model in self.rungs else len(self.rungs) - 1

    def next_up(self, states: dict[str, dict], failed: str) -> str:
        """Where a failing rung goes: the reference, or (``next``) the cheapest eligible rung above."""
        if self.demote_to == "next":
            for rung in self.rungs[self._index(failed) + 1:-1]:
                st = states.get(rung) or {}
                if st.get("eligible") and not st.get("failed"):
                    return rung
        return self.reference

    def update(self, states: dict[str, dict], serving: str, rung: str, agree: bool, pinned: bool,
               now: float, held: str | None = None) -> tuple[dict[str, dict], Move]:
        """Feed one outcome of ``rung`` against the reference; the states and the move (``held``:
        why ``rung`` may not be promoted, see :class:`~tierguard.engine.detector.Situation`)."""
        if rung not in self.rungs[:-1]:
            raise ValueError(f"{rung!r} is not a rung below the reference of {self.rungs}")
        below_serving = self._index(rung) == self._index(serving) - 1
        in_service = rung == serving
        engine = self.engine if in_service or below_serving else self.manual
        sit = Situation(serving="candidate" if in_service else "reference", pinned=pinned, now=now,
                        held=held)
        st, decision = engine.update(states.get(rung) or {}, agree, sit)
        target = None
        if decision.action == "demote":
            st["failed"] = decision.applied or bool(st.get("failed"))  # observe mode: not failed
            target = self.reference if decision.pin else self.next_up(states, rung)
            how = ("the reference" if target == self.reference else
                   f"{target}, the cheapest rung above it eligible on its own evidence")
            decision = dataclasses.replace(decision, reason=f"{rung} fails against the reference, "
                                           f"so {how} serves: {decision.reason}")
        elif decision.action == "promote":
            st["failed"] = False
            target = rung
            decision = dataclasses.replace(decision, reason=f"{rung} (one rung cheaper than {serving}) "
                                           f"holds: {decision.reason}")
        elif decision.action == "pin":  # promoting it would flap: the route stays, pinned
            target = serving
            decision = dataclasses.replace(decision, reason=f"{rung}: {decision.reason}")
        elif decision.action == "eligible":
            st["failed"] = False
            decision = dataclasses.replace(decision, reason=f"{rung}: {decision.reason}")
        states = {**states, rung: st}
        if target is not None and decision.applied:
            states = self.stamp(states, now, rung)
        return states, Move(decision, rung, target)

    def stamp(self, states: dict[str, dict], now: float, decided: str | None = None) -> dict[str, dict]:
        """A route change counts for every rung's cooldown and flap guard (the category moved),
        without restarting their evidence."""
        window = self.engine.config.flap_window_s
        out = dict(states)
        for rung in self.rungs[:-1]:
            if rung == decided or rung not in out:
                continue
            st = dict(out[rung])
            st["changes"] = [t for t in st.get("changes", []) if now - t < window] + [now]
            st["last_change"] = now
            out[rung] = st
        return out

    def feed(self, state: dict, serving: str, rung: str, agree: bool, pinned: bool,
             now: float, held: str | None = None) -> tuple[dict, Move]:
        """:meth:`update` on a category's stored state (``{"rungs": {MODEL: state}, ...}``)."""
        states, move = self.update(dict(state.get("rungs") or {}), serving, rung, agree, pinned, now,
                                   held)
        return {**state, "rungs": states}, move

    def restart_promotion(self, state: dict, serving: str) -> dict:
        """A category's stored state with every rung's promotion evidence restarted (the rung in
        service keeps its demotion watch)."""
        rungs = {rung: restart_promotion(st) for rung, st in (state.get("rungs") or {}).items()}
        return self.mirror({**state, "rungs": rungs}, serving)

    def mirror(self, state: dict, serving: str) -> dict:
        """The stored state with the :meth:`primary` rung's numbers at the top (what status,
        dashboards and operator actions read for a category)."""
        states = state.get("rungs") or {}
        return {**(states.get(self.primary(serving)) or {}), "rungs": states}

    def primary(self, serving: str) -> str:
        """The rung the category's headline numbers follow: the one in service, else the next to
        promote (just below the reference)."""
        return serving if serving in self.rungs[:-1] else self.rungs[-2]
