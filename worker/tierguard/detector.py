"""Pure decision logic: detector state + one outcome -> new state + decision.

No I/O here. The state is a small JSON-able dict persisted per category; every
decision carries its rule, reason and numbers so a route change can say why.

The first rule, :class:`WindowRule`: no decision below ``min_samples``
conclusive comparisons since the last restart; demote (candidate -> reference)
when agreement over the last ``window`` of them is below ``threshold``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Action = Literal["hold", "demote"]


@dataclass(frozen=True)
class Decision:
    action: Action
    rule: str
    reason: str
    agreement: float | None
    samples: int
    numbers: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class WindowRule:
    threshold: float
    min_samples: int
    window: int

    name = "window"

    def initial(self) -> dict:
        return {"rule": self.name, "bits": "", "n": 0}

    def agreement(self, state: dict) -> float | None:
        bits = state.get("bits", "")
        return bits.count("1") / len(bits) if bits else None

    def update(self, state: dict, agree: bool, *, can_demote: bool) -> tuple[dict, Decision]:
        """Feed one conclusive comparison; ``can_demote`` is False when the candidate is not serving."""
        if state.get("rule") != self.name:
            state = self.initial()
        bits = (state["bits"] + ("1" if agree else "0"))[-self.window:]
        new = {"rule": self.name, "bits": bits, "n": state["n"] + 1}
        rate = self.agreement(new)
        n = len(bits)
        numbers = {"threshold": self.threshold, "window": n, "min_samples": self.min_samples}
        if new["n"] < self.min_samples:
            return new, Decision("hold", self.name, f"{new['n']} < min_samples {self.min_samples}",
                                 rate, n, numbers)
        if can_demote and rate is not None and rate < self.threshold:
            reason = (f"agreement {rate:.3f} over the last {n} samples "
                      f"is below threshold {self.threshold:.3f}")
            return self.initial(), Decision("demote", self.name, reason, rate, n, numbers)
        return new, Decision("hold", self.name, f"agreement {rate:.3f} over {n}", rate, n, numbers)
