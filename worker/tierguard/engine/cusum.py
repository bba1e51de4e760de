"""Designing the Bernoulli CUSUM (Page's test) that watches a category's disagreement rate.

The test accumulates the log-likelihood ratio of "disagreement rate q1" (just
below the threshold) against "q0" (the healthy level) and alarms when the sum
crosses ``h``. To make its Markov chain exact, the statistic is kept in integer
units: an agreement subtracts ``k`` units (floored at zero), a disagreement adds
``m ≈ k·ln(q1/q0) / ln((1-q0)/(1-q1))``. ``h`` is the smallest number of units
whose probability of a false flip within ``horizon`` samples at the healthy
level is at most ``false_flip_rate``, computed by propagating the chain's
distribution (no simulation, deterministic, cached per design).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

UNITS_PER_AGREEMENT = 3


@dataclass(frozen=True)
class Design:
    healthy: float          # agreement that must not flip (q0 = 1 - healthy)
    detect: float           # agreement the test is tuned to catch (q1 = 1 - detect)
    k: int                  # units removed by an agreement
    m: int                  # units added by a disagreement
    h: int                  # flip when the statistic reaches h units
    horizon: int
    false_flip_rate: float  # achieved P(flip within horizon | healthy)

    @property
    def unit(self) -> float:
        """Log-likelihood ratio per unit, to show the statistic in nats."""
        q0, q1 = 1 - self.healthy, 1 - self.detect
        return math.log((1 - q0) / (1 - q1)) / self.k


def alarm_probability(k: int, m: int, h: int, q: float, horizon: int) -> float:
    """P(the statistic reaches h within ``horizon`` samples) when each disagrees with prob. q."""
    dist = np.zeros(h)
    dist[0] = 1.0
    absorbed = 0.0
    p = 1.0 - q
    new = np.empty(h)
    for _ in range(horizon):
        new.fill(0.0)
        new[0] = p * dist[: k + 1].sum()
        new[1 : h - k] = p * dist[k + 1 :]
        absorbed += q * dist[h - m :].sum()
        new[m:] += q * dist[: h - m]
        dist, new = new, dist
    return float(absorbed)


@lru_cache(maxsize=64)
def design(healthy: float, detect: float, false_flip_rate: float = 0.01,
           horizon: int = 10_000) -> Design:
    """The CUSUM for telling ``healthy`` from ``detect`` at the given false-flip budget."""
    if not 0 < detect < healthy < 1:
        raise ValueError(f"need 0 < detect ({detect}) < healthy ({healthy}) < 1")
    q0, q1 = 1 - healthy, 1 - detect
    k = UNITS_PER_AGREEMENT
    m = max(1, round(k * math.log(q1 / q0) / math.log((1 - q0) / (1 - q1))))
    memo: dict[int, float] = {}

    def p(h: int) -> float:
        if h not in memo:
            memo[h] = alarm_probability(k, m, h, q0, horizon)
        return memo[h]

    lo, hi = m, 4 * m
    while p(hi) > false_flip_rate:
        lo, hi = hi, hi * 2
    # The smallest h with p(h) <= budget, in [lo + 1, hi]. log p is nearly linear in h, so
    # interpolate on it (a few evaluations, not a dozen); the bracket keeps the answer exact.
    target = math.log(false_flip_rate)
    while hi - lo > 1:
        a, b = math.log(max(p(lo), 1e-300)), math.log(max(p(hi), 1e-300))
        guess = lo + (a - target) / (a - b) * (hi - lo) if a != b else (lo + hi) / 2
        mid = min(hi - 1, max(lo + 1, round(guess)))
        if p(mid) > false_flip_rate:
            lo = mid
        else:
            hi = mid
        if hi - lo > 1 and p(hi - 1) > false_flip_rate:  # the crossing is at hi: confirm and stop
            lo = hi - 1
    return Design(healthy, detect, k, m, hi, horizon, p(hi))
