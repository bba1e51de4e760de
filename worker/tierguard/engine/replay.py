"""The detector over a whole stream at once: the same decisions as :meth:`Engine.update`, fast.

Between two decisions nothing but counters moves, and those have closed forms:
the floored CUSUM ``s_i = max(0, s_{i-1} + x_i)`` is ``C_i - min(0, min_{j<=i} C_j)``
over the cumulative sums ``C`` (``s_0`` included), the evidence segment restarts
where ``s`` is zero, and the recovery counters are cumulative sums; so are the
promotion test's window blocks, hence its stakes and its integer log-wealth
(:mod:`tierguard.engine.betting`). So the run
finds, per block, the first sample where the per-sample engine could decide
anything (numpy, no Python per sample), applies the holds before it in bulk, and
lets :meth:`Engine.update` itself take that one sample. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tierguard.engine import betting
from tierguard.engine.detector import EWMA_SPAN, STATE_VERSION, Decision, Engine, Situation, fresh_state

BLOCK = 4096


def _window(st: dict, agree: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Before each outcome of ``agree``: the betting window's (agreements, outcomes), and after
    it the agreements of the block it completes (-1 where it completes none)."""
    size, n = betting.BLOCK, len(agree)
    k = st["cn"] + np.arange(n)                 # position in the blocks counted from the current one
    cum = st["ca"] + np.concatenate(([0], np.cumsum(agree, dtype=np.int64)))

    def at(pos: np.ndarray) -> np.ndarray:     # agreements before position ``pos`` (0 before the first)
        return np.where(pos == 0, 0, cum[np.maximum(pos - st["cn"], 0)])

    start = (k // size) * size
    prev_a = np.where(start == 0, st["pa"], at(start) - at(np.maximum(start - size, 0)))
    prev_n = np.where(start == 0, st["pn"], size)
    done = np.where((k + 1) % size == 0, at(k + 1) - at(start), -1)
    return prev_a + at(k) - at(start), prev_n + k - start, done


def _ewma(e0: float | None, x: np.ndarray) -> float:
    alpha = 2 / (EWMA_SPAN + 1)
    start = 0
    if e0 is None:
        e0, start = float(x[0]), 1
    e = e0
    for v in x[start:].tolist():  # a short loop over floats: exact same rounding as update()
        e = e + alpha * (v - e)
    return e


class StreamRunner:
    """Feeds one category's outcomes to ``engine``; ``situation(i)`` is asked only at decisions."""

    def __init__(self, engine: Engine, state: dict):
        self.engine = engine
        st = {**fresh_state(), **state} if state.get("v") == STATE_VERSION else fresh_state()
        self.state = st

    def _bulk(self, agree: np.ndarray, direction: str | None) -> None:
        """Apply ``len(agree)`` holds (no decision among them)."""
        st = self.state
        n = len(agree)
        if n == 0:
            return
        if self.engine.stale(st):
            raise AssertionError("bulk holds on stale state")  # update() restarts it first
        st["ewma"] = _ewma(st["ewma"], agree.astype(float))
        st["total"] += n
        st["n"] += n
        st["a"] += int(agree.sum())
        if direction == "promote":
            self._bet(agree)
        if direction == "demote":
            s = self._cusum(agree)
            st["s"] = int(s[-1])
            zeros = np.flatnonzero(s == 0)
            if len(zeros):
                last = zeros[-1]
                st["z"] = int(n - 1 - last)
                st["za"] = int(agree[last + 1:].sum())
            else:
                st["z"] += n
                st["za"] += int(agree.sum())

    def _wealth(self, agree: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The log-wealth after each outcome and the agreements of each block completed (-1: none)."""
        b = self.engine.betting
        a_w, n_w, done = _window(self.state, agree)
        j = b.levels(a_w, n_w)
        steps = np.where(agree, np.asarray(b.gains, np.int64)[j], -np.asarray(b.losses, np.int64)[j])
        return self.state["w"] + np.cumsum(steps), done

    def _bet(self, agree: np.ndarray) -> None:
        st, size = self.state, betting.BLOCK
        w, done = self._wealth(agree)
        st["w"] = int(w[-1])
        ends = np.flatnonzero(done >= 0)
        if len(ends):
            last = ends[-1]
            st["pa"], st["pn"] = int(done[last]), size
            st["ca"], st["cn"] = int(agree[last + 1:].sum()), int(len(agree) - 1 - last)
        else:
            st["ca"] += int(agree.sum())
            st["cn"] += len(agree)

    def _cusum(self, agree: np.ndarray) -> np.ndarray:
        """The statistic after each outcome: the floored recursion in closed form."""
        d = self.engine.design
        c = self.state["s"] + np.cumsum(np.where(agree, -d.k, d.m).astype(np.int64))
        return c - np.minimum(0, np.minimum.accumulate(c))

    def _next_event(self, agree: np.ndarray, times: np.ndarray, direction: str | None) -> int:
        """The first index in ``agree`` where the engine might decide; len(agree) if none."""
        st, c = self.state, self.engine.config
        n = len(agree)
        counts = st["n"] + np.arange(1, n + 1)
        if direction == "demote":
            s = self._cusum(agree)
            hits = np.flatnonzero((counts >= c.min_samples) & (s >= self.engine.design.h))
        elif direction == "promote":
            w, done = self._wealth(agree)
            b, k = self.engine.betting, st.get("k", 1)
            ready = (counts >= c.promote_min_samples) & (w >= b.threshold(k))
            moves = w <= b.floor(k)  # a new episode: a change of state update() makes
            if st["eligible"]:  # already announced: only a promotion after the cooldown is news
                moves |= (done >= 0) & (done < b.withdraw_below)  # the eligibility withdrawn
                if not c.auto_promote:
                    ready[:] = False
                elif st["last_change"] is not None:
                    ready &= times - st["last_change"] >= c.cooldown_s
            hits = np.flatnonzero(moves | ready)
        else:
            return n
        return int(hits[0]) if len(hits) else n

    def run(self, agree: np.ndarray, times: np.ndarray, situation: Situation,
            on_event: Callable[[int, Decision], Situation]) -> Situation:
        """Feed every outcome; ``on_event(index, decision)`` hears each decision that is not a
        plain hold and returns the situation from then on (its route may have moved)."""
        i, total, block = 0, len(agree), 256
        while i < total:
            direction = "pinned" if situation.pinned else {"candidate": "demote",
                                                           "reference": "promote"}.get(situation.serving)
            st = self.state
            if not self.engine.settled(st, direction):
                situation = self._one(agree, times, i, situation, on_event)
                i += 1
                continue
            end = min(total, i + block)
            j = i + self._next_event(agree[i:end], times[i:end], direction)
            # Look as far ahead as decisions have lately been apart (frequent restarts: little).
            block = min(BLOCK, max(64, 2 * (j - i)))
            self._bulk(agree[i:j], direction)
            if j < end:
                situation = self._one(agree, times, j, situation, on_event)
                j += 1
            i = j
        return situation

    def _one(self, agree: np.ndarray, times: np.ndarray, i: int, sit: Situation,
             on_event: Callable[[int, Decision], Situation]) -> Situation:
        self.state, decision = self.engine.update(self.state, bool(agree[i]),
                                                  Situation(sit.serving, sit.pinned, float(times[i])))
        return on_event(i, decision) if decision.action != "hold" else sit
