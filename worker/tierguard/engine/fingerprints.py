"""What a category's evidence was gathered on, and when it changes. Pure: state + one sample ->
state + an optional :class:`Reset`. No I/O.

Each sample of a category names its prompt fingerprint (:mod:`tierguard.contract.fingerprint`)
and, per model it compared, the snapshot the API reported. Every *dimension* — the prompt, and
each model's snapshot — keeps the values of its last :data:`WINDOW` (50) samples that named one
(null values: an older job, an unknown snapshot, never count), and a *current* value:

- the first value a dimension sees becomes current at once, without a reset;
- another value replaces the current one when it fills at least :data:`SHARE` (80 %) of a full
  window (40 of the last 50): the sample that brings it there triggers the reset. A few odd calls
  never do, and neither does a 50/50 mix (no value reaches 80 %); a value that comes back must win
  a full window again.

Snapshots are tracked per model, the served model's and every shadowed rung's alike (both describe
the evidence). A reset names every dimension that changed on that sample, old -> new; it restarts
the promotion evidence (the caller's job; the demotion watch keeps running).

The state lives in ``category.detector_state`` under :data:`KEY`:
``{"prompt": DIM, "snapshots": {MODEL: DIM}, "since": ISO, "reset": {"at": ISO, "what": TEXT}}``
with ``DIM = {"current": VALUE, "window": [[VALUE, COUNT], ...]}`` (the window as runs, oldest
first), ``since`` the time the current values became current (the first value seen, or the last
reset) and ``reset`` the last reset (absent before one).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass

KEY = "fingerprint"
WINDOW = 50
SHARE = 0.8


@dataclass(frozen=True)
class Change:
    """One dimension that changed: ``model`` None for the prompt fingerprint."""

    model: str | None
    old: str
    new: str

    def __str__(self) -> str:
        what = "prompt fingerprint" if self.model is None else f"{self.model} snapshot"
        return f"{what} {self.old} -> {self.new}"


@dataclass(frozen=True)
class Reset:
    """The evidence no longer describes what runs: what changed, and since when (ISO time)."""

    changes: tuple[Change, ...]
    since: str

    @property
    def what(self) -> str:
        return "; ".join(str(c) for c in self.changes)


def _count(runs: list, value: str) -> int:
    return sum(n for v, n in runs if v == value)


def _pushed(runs: list, value: str, window: int) -> list:
    """The runs with ``value`` appended and the oldest trimmed to ``window`` values."""
    out = [list(r) for r in runs]
    if out and out[-1][0] == value:
        out[-1][1] += 1
    else:
        out.append([value, 1])
    extra = sum(n for _, n in out) - window
    while extra > 0:
        take = min(extra, out[0][1])
        out[0][1] -= take
        extra -= take
        if out[0][1] == 0:
            out.pop(0)
    return out


@dataclass(frozen=True)
class Tracker:
    window: int = WINDOW
    share: float = SHARE

    @property
    def needed(self) -> int:
        """Samples of a full window a new value must carry to replace the current one."""
        return math.ceil(self.share * self.window - 1e-9)

    def dimension(self, dim: Mapping | None, value: str | None
                  ) -> tuple[dict, tuple[str, str] | None, bool]:
        """(the dimension after ``value``, (old, new) if its current value was replaced, whether
        its first value was adopted)."""
        dim = dict(dim or {"current": None, "window": []})
        if value is None:
            return dim, None, False
        runs = _pushed(dim.get("window") or [], value, self.window)
        current = dim.get("current")
        dim["window"] = runs
        if current is None:
            dim["current"] = value
            return dim, None, True
        full = sum(n for _, n in runs) >= self.window
        if value != current and full and _count(runs, value) >= self.needed:
            dim["current"] = value
            return dim, (current, value), False
        return dim, None, False

    def feed(self, state: Mapping | None, prompt: str | None, snapshots: Mapping[str, str | None],
             now: float) -> tuple[dict, Reset | None]:
        """The tracker's state after one sample (its prompt fingerprint, model -> snapshot), and
        the reset it triggers, if any."""
        st = dict(state or {})
        changes: list[Change] = []
        adopted = False
        st["prompt"], changed, first = self.dimension(st.get("prompt"), prompt)
        adopted |= first
        if changed:
            changes.append(Change(None, *changed))
        models = dict(st.get("snapshots") or {})
        for model in sorted(snapshots):
            models[model], changed, first = self.dimension(models.get(model), snapshots[model])
            adopted |= first
            if changed:
                changes.append(Change(model, *changed))
        st["snapshots"] = models
        at = dt.datetime.fromtimestamp(now, dt.UTC).isoformat()
        if changes:
            reset = Reset(tuple(changes), at)
            st["since"] = at
            st["reset"] = {"at": at, "what": reset.what}
            return st, reset
        if adopted and not st.get("since"):
            st["since"] = at
        return st, None


def summary(state: Mapping | None, served_model: str) -> dict[str, str | None]:
    """``{"prompt", "served_snapshot", "since"}``: a category's current prompt fingerprint, the
    current snapshot of the model serving it, and since when they hold (nulls before any)."""
    st = state or {}
    served = (st.get("snapshots") or {}).get(served_model) or {}
    return {"prompt": (st.get("prompt") or {}).get("current"), "served_snapshot": served.get("current"),
            "since": st.get("since")}


def last_reset(state: Mapping | None) -> tuple[float, str] | None:
    """(epoch seconds, what changed) of the category's last reset; None before one."""
    reset = (state or {}).get("reset")
    if not reset:
        return None
    return dt.datetime.fromisoformat(reset["at"]).timestamp(), reset["what"]


def kept(old: Mapping | None, new: dict) -> dict:
    """``new`` (a category's detector state as rebuilt by the engine) with the tracker's state
    of ``old`` carried over."""
    if not old or old.get(KEY) is None:
        return new
    return {**new, KEY: old[KEY]}
