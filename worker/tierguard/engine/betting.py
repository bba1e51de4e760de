"""The promotion test: a betting e-process for "agreement above ``promote_threshold``".

H0: the candidate agrees with the reference at most θ (``promote_threshold``) of the time.
Before each outcome x ∈ {0, 1} the test stakes a fraction λ ≥ 0 of its wealth on agreement,
``W ← W · (1 + λ (x − θ))``, with λ chosen from earlier outcomes only. Under H0 every factor
has expectation ≤ 1, so W is a nonnegative supermartingale and, by Ville's inequality,
``P(W ever reaches 1/α) ≤ α``: eligibility at ``W ≥ 1/α`` is wrong with probability at most α
(``promote_error_rate``) however long the evidence runs and however often it is looked at
(a one-sided confidence sequence by betting, Waudby-Smith & Ramdas 2023).

λ is a shrunk Kelly bet on the agreement of the latest 200–400 outcomes (two blocks of
:data:`BLOCK`, with :data:`PRIOR` outcomes at θ): a clearly bad stretch bets nothing and
costs little wealth. A long stretch near θ still loses slowly; so that a later recovery is
not buried under it, the wealth restarts at 1 once it has fallen to α_k (it is then far
from evidence), and each restart is a new *episode* paid from the error budget: episode k
needs ``W ≥ 1/α_k`` with α_k = α · 6/(π² k²), and Σ α_k = α, so the chance of a false
eligibility over all episodes together is still at most α (no free fresh tries). Once
eligible, a whole block whose Wilson upper bound falls below θ withdraws the eligibility
(the candidate got worse); that can only make promotions rarer.

Exact and replayable: λ is rounded down to one of :data:`LEVELS` levels with basic float
arithmetic (identical in numpy and Python) and the log-wealth is kept in integer units of
1/:data:`UNITS` nat, gains rounded down and losses up, so the kept wealth never exceeds the
true one and the bound still holds. Pure: no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

BLOCK = 200          # outcomes per window block; λ reads the previous and the current block
PRIOR = 20           # pseudo-outcomes at θ in λ's estimate (a cautious first bet)
SHRINK = 0.85        # share of the Kelly fraction staked (estimates are noisy)
CAP = 0.9            # the largest stake, as a share of 1/θ (where one disagreement costs all)
LEVELS = 64          # λ rounded down to CAP/θ · j / LEVELS
UNITS = 100_000      # log-wealth units per nat
RULE = "betting-v1"  # part of the promotion fingerprint: stored evidence of another rule restarts


def wilson(agree: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for agree/n (``evaluate``'s bound, looked at once; here, a whole
    block's upper bound that withdraws an eligibility)."""
    if n == 0:
        return 0.0, 1.0
    p = agree / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    denom = 1 + z * z / n
    return (centre - spread) / denom, (centre + spread) / denom


@dataclass(frozen=True)
class Betting:
    theta: float
    alpha: float
    h: int                    # episode 1 is eligible at log-wealth ≥ h units (ln 1/α_1, rounded up)
    gains: tuple[int, ...]    # units won by an agreement at each level (rounded down)
    losses: tuple[int, ...]   # units lost by a disagreement at each level (rounded up)
    withdraw_below: int       # a block with fewer agreements withdraws an eligibility

    @property
    def step(self) -> float:
        return CAP / self.theta / LEVELS

    def threshold(self, episode: int) -> int:
        """Log-wealth units episode ``episode`` (1, 2, …) must reach: ln 1/α_k, rounded up."""
        return h_units(self.alpha, episode)

    def floor(self, episode: int) -> int:
        """Log-wealth units at which episode ``episode`` ends and the next begins: −ln 1/α_k."""
        return -self.threshold(episode)

    def level(self, agree: int, n: int) -> int:
        """The stake's level for a window of ``agree`` agreements in ``n`` outcomes."""
        p = (agree + PRIOR * self.theta) / (n + PRIOR)
        lam = SHRINK * (p - self.theta) / (self.theta * (1 - self.theta))
        return 0 if lam <= 0 else min(LEVELS, math.floor(lam / self.step))

    def levels(self, agree: np.ndarray, n: np.ndarray) -> np.ndarray:
        """:meth:`level` over arrays, with the same float operations."""
        p = (agree + PRIOR * self.theta) / (n + PRIOR)
        lam = SHRINK * (p - self.theta) / (self.theta * (1 - self.theta))
        return np.where(lam <= 0, 0, np.minimum(LEVELS, np.floor(np.maximum(lam, 0) / self.step))
                        ).astype(np.int64)

    def feed(self, st: dict, agree: bool) -> int | None:
        """Bet on one outcome: update the wealth ``w`` and the window in ``st``; the agreements
        of the block this outcome completed, else None."""
        j = self.level(st["pa"] + st["ca"], st["pn"] + st["cn"])
        st["w"] += self.gains[j] if agree else -self.losses[j]
        st["ca"] += int(agree)
        st["cn"] += 1
        if st["cn"] < BLOCK:
            return None
        done = st["ca"]
        st["pa"], st["pn"], st["ca"], st["cn"] = done, BLOCK, 0, 0
        return done

    def e_value(self, st: dict) -> float:
        return math.exp(min(st["w"] / UNITS, 700.0))


@lru_cache(maxsize=1024)
def h_units(alpha: float, episode: int) -> int:
    """ceil(UNITS · ln 1/α_k) with α_k = α · 6/(π² k²)."""
    return math.ceil(UNITS * math.log(math.pi ** 2 * episode ** 2 / (6 * alpha)))


@lru_cache(maxsize=64)
def betting(theta: float, alpha: float) -> Betting:
    """The test of agreement above ``theta`` with error rate ``alpha``."""
    if not 0 < alpha < 1:
        raise ValueError(f"need 0 < promote_error_rate ({alpha}) < 1")
    theta = min(max(theta, 1e-6), 1 - 1e-6)  # a threshold of 1 is never reached, one of 0 at once
    step = CAP / theta / LEVELS
    lams = [step * j for j in range(LEVELS + 1)]
    gains = tuple(math.floor(UNITS * math.log1p(lam * (1 - theta))) for lam in lams)
    losses = tuple(math.ceil(-UNITS * math.log1p(-lam * theta)) for lam in lams)
    withdraw = next((a for a in range(BLOCK + 1) if wilson(a, BLOCK)[1] >= theta), BLOCK + 1)
    return Betting(theta, alpha, h_units(alpha, 1), gains, losses, withdraw)
