"""Pure decision logic: detector state + one outcome -> new state + decision. No I/O.

Per category, one stream of agree/disagree outcomes (errors never enter it):

- While the **candidate serves**, a Bernoulli CUSUM (see :mod:`tierguard.engine.cusum`)
  watches for a drop below ``threshold``; no decision before ``min_samples``
  outcomes since the last restart; crossing ``h`` demotes to the reference.
  Demotion is never delayed by a cooldown.
- While the **reference serves**, the candidate is shadowed and the engine waits
  for agreement above ``promote_threshold``: eligible when the betting test of
  :mod:`tierguard.engine.betting` reaches its episode's threshold after at least
  ``promote_min_samples`` outcomes. It stays valid though it is consulted after every
  sample, and its evidence never restarts on its own (its episodes are paid from the
  ``promote_error_rate`` budget). Promotion is an
  operator action unless ``auto_promote``; automatic promotion waits out ``cooldown_s``
  after the last change.
- **Flap guard**: the ``flap_limit``-th automatic change inside
  ``flap_window_s`` pins the category to the reference instead.
- **Pinned**: decisions hold; the evidence restarts when the pin goes. A change of the
  demotion settings restarts all evidence; a change of the promotion settings (or rule) only
  the promotion evidence, so an upgrade re-derives every eligibility on the next sample.
  **Observe mode**: decisions are reported with ``applied=False`` and routes never move.

Every decision carries its rule, reason and numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from tierguard.engine.betting import BLOCK, RULE, UNITS, Betting, betting
from tierguard.engine.cusum import Design, design

Action = Literal["hold", "demote", "eligible", "promote", "pin"]
Serving = Literal["candidate", "reference", "other"]
STATE_VERSION = 2
EWMA_SPAN = 200


@dataclass(frozen=True)
class EngineConfig:
    threshold: float = 0.90
    healthy: float = 0.93
    false_flip_rate: float = 0.01
    horizon: int = 10_000
    min_samples: int = 50
    promote_threshold: float = 0.95
    promote_min_samples: int = 200
    promote_error_rate: float = 0.01
    auto_promote: bool = False
    cooldown_s: float = 3600.0
    flap_limit: int = 3
    flap_window_s: float = 86_400.0
    observe: bool = False

    @property
    def detect(self) -> float:
        """The agreement level the CUSUM is tuned to catch: one point below the threshold."""
        return max(self.threshold - 0.01, self.threshold / 2)


@dataclass(frozen=True)
class Situation:
    serving: Serving
    pinned: bool
    now: float  # seconds since the epoch
    held: str | None = None  # why the candidate may not be promoted whatever its agreement


@dataclass(frozen=True)
class Decision:
    action: Action
    rule: str
    reason: str
    agreement: float | None
    samples: int
    applied: bool = True
    pin: bool = False
    numbers: dict[str, float] = field(default_factory=dict)

    @property
    def changes_route(self) -> bool:
        return self.action in ("demote", "promote", "pin")


def fresh_state() -> dict:
    return {"v": STATE_VERSION, "dir": None, "s": 0, "n": 0, "a": 0, "z": 0, "za": 0, "eligible": False,
            "ewma": None, "total": 0, "last_change": None, "changes": [], **_BET}


def note_change(state: dict, now: float, window_s: float) -> dict:
    """Record a route change at ``now`` (automatic or by an operator)."""
    st = {**fresh_state(), **state} if state.get("v") == STATE_VERSION else fresh_state()
    st["changes"] = [t for t in st["changes"] if now - t < window_s] + [now]
    st["last_change"] = now
    return _restart(st, None)


def restart_promotion(state: dict) -> dict:
    """``state`` with its promotion evidence (and eligibility) restarted, as after a change of
    what the evidence describes (a new prompt or snapshot); a demotion watch keeps running."""
    if state.get("v") != STATE_VERSION or state.get("dir") != "promote":
        return dict(state)
    return _restart(state, "promote")


# The promotion test's state: log-wealth in units, its episode, the previous and current window blocks.
_BET = {"w": 0, "k": 1, "pa": 0, "pn": 0, "ca": 0, "cn": 0}


def _restart(st: dict, direction: str | None) -> dict:
    return {**st, "dir": direction, "s": 0, "n": 0, "a": 0, "z": 0, "za": 0, "eligible": False, **_BET}


class Engine:
    def __init__(self, config: EngineConfig):
        self.config = config
        self.design: Design = design(config.healthy, config.detect, config.false_flip_rate,
                                     config.horizon)
        self.betting: Betting = betting(config.promote_threshold, config.promote_error_rate)
        c = config
        # The settings the evidence was gathered under; a state from other settings restarts.
        self.fingerprint = (f"{c.threshold:g}|{c.healthy:g}|{c.false_flip_rate:g}|{c.horizon}|"
                            f"{c.min_samples}")
        self.promotion_fingerprint = (f"{RULE}|{c.promote_threshold:g}|{c.promote_min_samples}|"
                                      f"{c.promote_error_rate:g}")

    def stale(self, state: dict) -> bool:
        """True when ``state`` was built under other demotion settings (a policy change). A state
        written before the promotion settings had their own fingerprint carries them after these."""
        cfg = state.get("cfg")
        return cfg is not None and str(cfg).split("|")[:5] != self.fingerprint.split("|")

    def settled(self, state: dict, direction: str | None) -> bool:
        """True when :meth:`update` would keep ``state``'s evidence for an outcome in ``direction``."""
        return (state.get("cfg") == self.fingerprint and state.get("dir") == direction
                and (direction != "promote" or state.get("pcfg") == self.promotion_fingerprint))

    def promotion(self, state: dict) -> dict[str, float] | None:
        """The promotion test's standing (``e_value`` against ``e_threshold`` over ``samples``),
        or None when the state is not gathering promotion evidence under today's settings."""
        if state.get("v") != STATE_VERSION or not self.settled(state, "promote"):
            return None
        n = int(state.get("n", 0))
        k = int(state.get("k", 1))
        return {"e_value": self.betting.e_value({**fresh_state(), **state}),
                "e_threshold": math.exp(self.betting.threshold(k) / UNITS), "episode": k, "samples": n,
                "agreement": state.get("a", 0) / n if n else None}  # type: ignore[dict-item]

    def statistic(self, state: dict) -> float:
        """The CUSUM statistic as a share of the flip threshold (1.0 flips)."""
        return state.get("s", 0) / self.design.h if state.get("v") == STATE_VERSION else 0.0

    def update(self, state: dict, agree: bool, sit: Situation) -> tuple[dict, Decision]:
        st = {**fresh_state(), **state} if state.get("v") == STATE_VERSION else fresh_state()
        if self.stale(st):  # never decide on evidence gathered under other settings
            st = _restart(st, None)
        st["cfg"] = self.fingerprint
        alpha = 2 / (EWMA_SPAN + 1)
        st["ewma"] = float(agree) if st["ewma"] is None else st["ewma"] + alpha * (agree - st["ewma"])
        st["total"] += 1
        direction = "pinned" if sit.pinned else {"candidate": "demote",
                                                 "reference": "promote"}.get(sit.serving)
        if st["dir"] != direction:
            st = _restart(st, direction)
        if direction == "promote" and st.get("pcfg") != self.promotion_fingerprint:
            st = {**_restart(st, "promote"), "pcfg": self.promotion_fingerprint}
        st["n"] += 1
        st["a"] += int(agree)
        if direction == "pinned":
            return st, self._hold(st, "pinned by an operator; the engine restarts when unpinned")
        if direction == "demote":
            return self._watch_candidate(st, agree, sit)
        if direction == "promote":
            return self._watch_recovery(st, agree, sit)
        return st, self._hold(st, "served by a model outside the candidate/reference pair")

    def _hold(self, st: dict, reason: str, rule: str = "cusum") -> Decision:
        return Decision("hold", rule, reason, st["ewma"], st["n"])

    def _flapping(self, st: dict, now: float) -> bool:
        recent = [t for t in st["changes"] if now - t < self.config.flap_window_s]
        return len(recent) + 1 >= self.config.flap_limit

    def _watch_candidate(self, st: dict, agree: bool, sit: Situation) -> tuple[dict, Decision]:
        c, d = self.config, self.design
        st["s"] = max(0, st["s"] - d.k) if agree else st["s"] + d.m
        # The evidence segment: samples since the statistic last stood at zero.
        st["z"], st["za"] = (0, 0) if st["s"] == 0 else (st["z"] + 1, st["za"] + int(agree))
        if st["n"] < c.min_samples:
            return st, self._hold(st, f"{st['n']} < min_samples {c.min_samples}")
        if st["s"] < d.h:
            return st, self._hold(st, f"CUSUM {st['s']}/{d.h}")
        seg, seg_agree = st["z"], st["za"]
        rate = seg_agree / seg
        numbers = {"statistic": st["s"], "h": d.h, "k": d.k, "m": d.m, "healthy": c.healthy,
                   "detect": c.detect, "threshold": c.threshold,
                   "false_flip_rate": d.false_flip_rate, "horizon": d.horizon,
                   "ewma": st["ewma"], "segment": seg, "segment_agree": seg_agree,
                   "samples_since_restart": st["n"]}
        reason = (f"CUSUM reached {st['s']}/{d.h}: {seg_agree}/{seg} = {rate:.3f} agreement over "
                  f"the last {seg} samples is evidence of a level below threshold "
                  f"{c.threshold:.2f} (designed for ≤ {d.false_flip_rate:.2%} false flips per "
                  f"{d.horizon:,} samples at {c.healthy:.2f})")
        if c.observe:
            st = _restart(st, "demote")
            return st, Decision("demote", "cusum", "would flip (observe mode): " + reason,
                                rate, seg, applied=False, numbers=numbers)
        pin = self._flapping(st, sit.now)
        if pin:
            reason += f"; flap guard: {c.flap_limit} changes within {c.flap_window_s / 3600:g} h, pinned"
        st = note_change(st, sit.now, c.flap_window_s)
        return st, Decision("demote", "flap_guard" if pin else "cusum", reason, rate, seg,
                            pin=pin, numbers=numbers)

    def _watch_recovery(self, st: dict, agree: bool, sit: Situation) -> tuple[dict, Decision]:
        c, b = self.config, self.betting
        block = b.feed(st, agree)
        n, a = st["n"], st["a"]
        if st["eligible"] and block is not None and block < b.withdraw_below:
            st = _restart(st, "promote")
            return st, self._hold(st, f"eligibility withdrawn: the last {BLOCK} comparisons agree "
                                      f"{block}/{BLOCK}, clearly below {c.promote_threshold:.2f}; "
                                      "evidence restarted", "promotion")
        k = st.get("k", 1)
        if st["w"] <= b.floor(k):  # far from evidence: a new episode, paid from the budget
            st["w"], st["k"] = 0, k + 1
            return st, self._hold(st, f"recovery {a}/{n}: betting episode {k + 1}", "promotion")
        e, need = b.e_value(st), math.exp(b.threshold(k) / UNITS)
        if n < c.promote_min_samples or st["w"] < b.threshold(k):
            return st, self._hold(st, f"recovery {a}/{n}, e-value {e:.3g} of {need:.3g}", "promotion")
        if sit.held:  # the other stream (its answers' checks) is not healthy: not eligible
            st["eligible"] = False
            return st, self._hold(st, f"agreement holds (e-value {e:.3g} ≥ {need:.3g}) but {sit.held}",
                                  "promotion")
        numbers = {"e_value": e, "log_e_value": st["w"] / UNITS, "e_threshold": need, "episode": k,
                   "promote_threshold": c.promote_threshold, "promote_error_rate": c.promote_error_rate,
                   "promote_min_samples": c.promote_min_samples, "samples": n,
                   "agreement_since_restart": a / n}
        reason = (f"agreement {a}/{n} = {a / n:.3f}; the betting e-value {e:.3g} ≥ {need:.3g} "
                  f"(episode {k}): agreement above promote threshold {c.promote_threshold:.2f}, "
                  f"wrong with probability ≤ {c.promote_error_rate:g} though checked after every sample")
        if not c.auto_promote:
            if st["eligible"]:
                return st, self._hold(st, "eligible; waiting for `tierguard promote`", "promotion")
            st["eligible"] = True
            return st, Decision("eligible", "promotion", reason, st["ewma"], n, numbers=numbers)
        last = st["last_change"]
        if last is not None and sit.now - last < c.cooldown_s:
            st["eligible"] = True
            wait = c.cooldown_s - (sit.now - last)
            return st, self._hold(st, f"eligible; cooldown for {wait:.0f} s more", "promotion")
        if c.observe:
            st = _restart(st, "promote")
            return st, Decision("promote", "promotion", "would promote (observe mode): " + reason,
                                st["ewma"], n, applied=False, numbers=numbers)
        if self._flapping(st, sit.now):
            st = note_change(st, sit.now, c.flap_window_s)
            return st, Decision("pin", "flap_guard",
                                f"{reason}, but promoting would be the {c.flap_limit}th change "
                                f"within {c.flap_window_s / 3600:g} h: pinned to the reference",
                                st["ewma"], n, pin=True, numbers=numbers)
        st = note_change(st, sit.now, c.flap_window_s)
        return st, Decision("promote", "promotion", reason, st["ewma"], n, numbers=numbers)
