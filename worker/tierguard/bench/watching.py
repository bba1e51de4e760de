"""``tierguard bench watching``: what watching costs and how fast it catches drifts, over a month.

A simulated fleet of 20 categories with a long tail of volumes (a few with
100,000+ calls a day, most with hundreds to thousands) and their own token
sizes, served by the candidate, shadowed on the reference, priced with the
policy's prices. Three categories drift at known times: two sharply (to 0.85),
one gradually (to 0.88 over four days); the others stay at 0.97. The real
detector (``Engine.update``) and the real adaptive rate (``engine.sampling``) run
on the simulated outcomes, hour by hour, for three set-ups:

- ``fixed_sync``: 5 % of calls, shadowed at once, full price;
- ``fixed_batch``: 5 %, through Message Batches (the batch discount; results an
  hour later: up to 10 minutes gathering plus the batch's processing);
- ``adaptive_batch``: adaptive rates (1 %–10 %), through batches;
- ``adaptive_sync``: adaptive rates, shadowed at once (what tierguard runs today).

A detection's delay runs from the drift's start (for the gradual one, from when
its agreement crosses the 0.90 threshold) to the flip, batch delay included.
Production spend is the month's calls at the candidate's prices.
"""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import dataclass
from typing import Any

from tierguard.bench.stats import binomial
from tierguard.engine.detector import Situation
from tierguard.engine.sampling import Evidence, SamplingConfig, choose
from tierguard.policy import Policy, parse_policy

DAYS = 30
VOLUMES = [250_000, 140_000, 100_000, 40_000, 20_000, 12_000, 8_000, 5_000, 4_000, 3_000,
           2_500, 2_000, 1_500, 1_200, 1_000, 800, 600, 500, 400, 300]  # calls a day
HEALTHY = 0.97
BATCH_DELAY_H = 1.0
# category index -> (kind, start day, level)
DRIFTS = {2: ("sharp", 9.5, 0.85), 6: ("sharp", 17.25, 0.85), 4: ("gradual", 11.0, 0.88)}
GRADUAL_DAYS = 4.0
SETUPS = {"fixed_sync": ("fixed", False), "fixed_batch": ("fixed", True),
          "adaptive_batch": ("adaptive", True),
          "adaptive_sync": ("adaptive", False)}  # what tierguard runs today (no batch shadows yet)
GOAL_SHARE, GOAL_DELAY_RATIO = 0.05, 1.5


@dataclass
class Fleet:
    tokens: list[tuple[int, int]]


def agreement(index: int, day: float) -> float:
    drift = DRIFTS.get(index)
    if drift is None or day < drift[1]:
        return HEALTHY
    kind, start, level = drift
    if kind == "sharp":
        return level
    return HEALTHY - (HEALTHY - level) * min(1.0, (day - start) / GRADUAL_DAYS)


def drift_time_h(index: int) -> float:
    """When the drift counts as started: the step, or the gradual one crossing 0.90."""
    kind, start, level = DRIFTS[index]
    if kind == "sharp":
        return start * 24
    return (start + GRADUAL_DAYS * (HEALTHY - 0.90) / (HEALTHY - level)) * 24


def run_setup(policy: Policy, fleets: list[Fleet], mode: str, batch: bool, seed: int) -> dict[str, Any]:
    """The set-up over every simulated month (one per fleet), its drifts' delays pooled."""
    runs = [_month(policy, fleet, mode, batch, seed + k) for k, fleet in enumerate(fleets)]
    delays = [d for r in runs for d in r[0]]
    production = sum(r[2] for r in runs)
    shadow = sum(r[3] for r in runs)
    finite = [d for d in delays if math.isfinite(d)]

    def hours(x: float | None) -> float | None:  # a drift never caught: null, and "detected" says so
        return None if x is None or not math.isfinite(x) else round(x, 2)

    return {"watching_share": round(shadow / production, 4),
            "detection_hours": {"median": hours(statistics.median(delays)) if delays else None,
                                "max": hours(max(delays)) if delays else None},
            "detected": f"{len(finite)}/{len(delays)}", "false_flips": sum(r[1] for r in runs),
            "production_usd": round(production, 2), "shadow_usd": round(shadow, 2)}


def _month(policy: Policy, fleet: Fleet, mode: str, batch: bool, seed: int
           ) -> tuple[list[float], int, float, float]:
    rng = random.Random(seed)
    cat = policy.category("bench")
    engine = cat.engine
    config = SamplingConfig(mode=mode, fixed_rate=0.05, rate_min=0.01, rate_max=0.10,
                            min_samples=cat.min_samples, settle_s=3600)
    production = shadow = 0.0
    delays, false_flips = [], 0
    for index, volume in enumerate(VOLUMES):
        tin, tout = fleet.tokens[index]
        per_call = policy.cost_usd(cat.candidate, tin, tout) or 0.0
        per_shadow = policy.cost_usd(cat.reference, tin, tout, batch=batch) or 0.0
        production += volume * DAYS * per_call
        state: dict = {}
        flipped_at = None
        for hour in range(DAYS * 24):
            rate = choose(config, Evidence(engine.statistic(state), int(state.get("n", 0)),
                                           None)).rate
            calls = volume / 24
            n = binomial(rng, calls, rate)
            shadow += n * per_shadow
            p = agreement(index, (hour + 0.5) / 24)
            sit = Situation("candidate", pinned=False, now=hour * 3600.0)
            for j in range(n):
                state, decision = engine.update(state, rng.random() < p, sit)
                if decision.action == "demote":
                    flipped_at = hour + (j + 1) / (n + 1) + (BATCH_DELAY_H if batch else 0.0)
                    break
            if flipped_at is not None:
                break
        if index in DRIFTS:
            if flipped_at is not None and flipped_at >= DRIFTS[index][1] * 24:
                # A gradual drift caught before it crosses the threshold: no delay at all.
                delays.append(max(0.0, flipped_at - drift_time_h(index)))
            elif flipped_at is not None:
                false_flips += 1  # before its drift began: a false flip
            else:
                delays.append(math.inf)  # never caught
        elif flipped_at is not None:
            false_flips += 1
    return delays, false_flips, production, shadow



def watching_figures(seed: int = 7, months: int = 5, policy: Policy | None = None) -> dict[str, Any]:
    """Every set-up on the same ``months`` simulated months (same fleets, same random streams)."""
    policy = policy or parse_policy({"defaults": {"min_samples": 50}, "categories": {"bench": {}}})
    rng = random.Random(seed)
    fleets = [Fleet(tokens=[(rng.randint(300, 2500), rng.randint(10, 300)) for _ in VOLUMES])
              for _ in range(months)]
    setups = {name: run_setup(policy, fleets, mode, batch, seed)
              for name, (mode, batch) in SETUPS.items()}
    base = setups["fixed_sync"]["detection_hours"]["median"]
    adaptive = setups["adaptive_batch"]
    median = adaptive["detection_hours"]["median"]
    ratio = median / base if base and median is not None else None
    return {"setups": setups, "categories": len(VOLUMES), "days": DAYS, "months": months,
            "drifts": {str(i): {"kind": k, "start_day": s, "to": lvl} for i, (k, s, lvl) in DRIFTS.items()},
            "adaptive_delay_ratio": round(ratio, 3) if ratio is not None and math.isfinite(ratio) else None,
            "goals": {"watching_share": GOAL_SHARE, "delay_ratio": GOAL_DELAY_RATIO, "false_flips": 0}}
