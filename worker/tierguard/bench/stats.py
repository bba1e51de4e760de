"""Statistics the benchmarks share."""

from __future__ import annotations

import math
import random

import numpy as np


def pct(values: list[float], q: float) -> float:
    """The ``q``-th percentile of ``values`` (numpy's linear interpolation)."""
    return float(np.percentile(np.array(values), q))


def binomial(rng: random.Random, calls: float, rate: float) -> int:
    """Draws of a Binomial(calls, rate) count: normal above a mean of 30, Poisson (Knuth) below."""
    mean = calls * rate
    if mean > 30:  # normal approximation: fast and close enough for hourly counts
        return max(0, round(rng.gauss(mean, math.sqrt(mean * (1 - rate)))))
    n, threshold, product = 0, math.exp(-mean), rng.random()
    while product > threshold:  # Poisson (Knuth) for small hourly counts
        n += 1
        product *= rng.random()
    return n
