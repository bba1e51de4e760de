"""``tierguard bench ladder``: what a three-rung ladder saves against two tiers, at no cost in safety.

A simulated month of a 30-category fleet with the cost benchmark's long tail of
volumes and token sizes. A third of the categories hold on Haiku (0.97; Sonnet
0.98), a third fail on Haiku (0.80) but hold on Sonnet (0.97), a third need Opus
(Haiku 0.75, Sonnet 0.82). Two drifts at known times: a sharp one on Haiku (to
0.85) and a gradual one (to 0.88 over four days), both in categories that hold on
Haiku until then. Every category starts on Haiku; 5 % of calls are shadowed;
ladders probe ``probe_rate`` of sampled jobs on a rung neither serving nor
shadowed. The real engine runs on the simulated outcomes (``Ladder.update``, the
two-model engine per rung), hour by hour, for three set-ups:

- ``two_tier``: Haiku/Opus (auto-promotion on);
- ``ladder``: Haiku/Sonnet/Opus, ``demote_to: reference``, auto-promotion on;
- ``ladder_next``: the same with ``demote_to: next``.

Each rung's outcome stream in a category is its own seeded stream, so a rung
serving in two set-ups sees the same outcomes. ``hours_below_threshold``:
category-hours served by a rung whose true agreement is below the threshold; a
false flip: a rung moved away from while its true agreement is healthy.
"""

from __future__ import annotations

import math
import random
import statistics
from typing import Any

from tierguard.bench.stats import binomial
from tierguard.bench.watching import VOLUMES
from tierguard.policy import CategoryPolicy, parse_policy

HAIKU, SONNET, OPUS = "claude-haiku-4-5", "claude-sonnet-4-6", "claude-opus-4-7"
DAYS = 30
FLEET = VOLUMES + [2_000, 1_500, 900, 700, 600, 450, 350, 300, 250, 200]  # 30 categories
GROUPS = {0: {HAIKU: 0.97, SONNET: 0.98}, 1: {HAIKU: 0.80, SONNET: 0.97}, 2: {HAIKU: 0.75, SONNET: 0.82}}
DRIFTS = {3: ("sharp", 10.5, 0.85), 6: ("gradual", 17.0, 0.88)}  # category -> Haiku's drift
GRADUAL_DAYS = 4.0
SAMPLE_RATE = 0.05
SETUPS = {"two_tier": ([HAIKU, OPUS], "reference"), "ladder": ([HAIKU, SONNET, OPUS], "reference"),
          "ladder_next": ([HAIKU, SONNET, OPUS], "next")}
GOAL_COST, GOAL_DELAY = 0.85, 1.2


def true_agreement(index: int, model: str, day: float) -> float:
    if model == OPUS:
        return 1.0
    base = GROUPS[index % 3][model]
    drift = DRIFTS.get(index)
    if model != HAIKU or drift is None or day < drift[1]:
        return base
    kind, start, level = drift
    if kind == "sharp":
        return level
    return base - (base - level) * min(1.0, (day - start) / GRADUAL_DAYS)


def drift_time_h(index: int, threshold: float) -> float:
    kind, start, level = DRIFTS[index]
    base = GROUPS[index % 3][HAIKU]
    if kind == "sharp":
        return start * 24
    return (start + GRADUAL_DAYS * (base - threshold) / (base - level)) * 24


def _category(ladder: list[str], demote_to: str) -> CategoryPolicy:
    return parse_policy({"models": {"ladder": ladder}, "categories": {"bench": {}}, "defaults": {
        "auto_promote": True, "demote_to": demote_to, "sample_rate": SAMPLE_RATE}}).category("bench")


def _one(cat: CategoryPolicy, index: int, volume: int, tokens: tuple[int, int], seed: int,
         pricing: Any, days: int) -> dict[str, Any]:
    lad = cat.ladder_engine
    rungs = cat.rungs
    streams = {m: random.Random(f"{seed}|{index}|{m}") for m in rungs}  # one per rung
    probes = random.Random(f"{seed}|{index}|probe")
    sampling = random.Random(f"{seed}|{index}|sampling")
    price = {m: pricing(m, *tokens) or 0.0 for m in rungs}
    serving, states = rungs[0], {}
    out = {"production": 0.0, "shadow": 0.0, "below_h": 0.0, "false_flips": 0, "flips": []}
    healthy = cat.healthy_level
    for hour in range(days * 24):
        day = (hour + 0.5) / 24
        calls = volume / 24
        out["production"] += calls * price[serving]
        if true_agreement(index, serving, day) < cat.threshold:
            out["below_h"] += 1
        n = binomial(sampling, calls, SAMPLE_RATE)
        for j in range(n):
            now = hour * 3600.0 + 3600.0 * (j + 1) / (n + 1)
            shadowed = cat.other_model(serving)
            compared = [serving if serving != cat.reference else shadowed]
            out["shadow"] += price[shadowed]
            if len(rungs) > 2 and probes.random() < cat.probe_rate:
                choices = [m for m in rungs[:-1] if m not in (serving, shadowed)]
                if choices:
                    compared.append(choices[probes.randrange(len(choices))])
                    out["shadow"] += price[compared[-1]]
            for rung in compared:
                agree = streams[rung].random() < true_agreement(index, rung, day)
                states, move = lad.update(states, serving, rung, agree, False, now)
                if move.target is not None and move.decision.applied and move.target != serving:
                    if move.decision.action == "demote" and true_agreement(index, serving, day) >= healthy:
                        out["false_flips"] += 1
                    out["flips"].append((hour + (j + 1) / (n + 1), serving, move.target))
                    serving = move.target
                    break
    return out


def run_setup(ladder: list[str], demote_to: str, fleet: list[tuple[int, int]], seed: int,
              pricing: Any, days: int = DAYS) -> dict[str, Any]:
    cat = _category(ladder, demote_to)
    production = shadow = reference = below = 0.0
    false_flips, delays = 0, []
    for index, volume in enumerate(FLEET):
        r = _one(cat, index, volume, fleet[index], seed, pricing, days)
        production += r["production"]
        shadow += r["shadow"]
        below += r["below_h"]
        false_flips += r["false_flips"]
        reference += volume * days * (pricing(OPUS, *fleet[index]) or 0.0)
        if index in DRIFTS and DRIFTS[index][1] < days:
            start = drift_time_h(index, cat.threshold)
            left = [t for t, frm, _ in r["flips"] if frm == HAIKU and t >= DRIFTS[index][1] * 24]
            delays.append(max(0.0, left[0] - start) if left else math.inf)

    def hours(x: float) -> float | None:
        return None if not math.isfinite(x) else round(x, 2)

    return {"production_usd": round(production, 2), "vs_all_reference": round(production / reference, 4),
            "watching_share": round(shadow / production, 4),
            "detection_hours": {"median": hours(statistics.median(delays)) if delays else None,
                                "max": hours(max(delays)) if delays else None},
            "false_flips": false_flips, "hours_below_threshold": round(below, 1),
            "shadow_usd": round(shadow, 2)}


def fleet_tokens(seed: int) -> list[tuple[int, int]]:
    """Each category's (input, output) tokens a call, drawn from ``seed``."""
    rng = random.Random(seed)
    return [(rng.randint(300, 2500), rng.randint(10, 300)) for _ in FLEET]


def ladder_figures(seed: int = 11, days: int = DAYS) -> dict[str, Any]:
    policy = parse_policy({})
    fleet = fleet_tokens(seed)
    setups = {name: run_setup(ladder, demote_to, fleet, seed, policy.cost_usd, days)
              for name, (ladder, demote_to) in SETUPS.items()}
    base = setups["two_tier"]
    for name in ("ladder", "ladder_next"):
        s = setups[name]
        s["cost_vs_two_tier"] = round(s["production_usd"] / base["production_usd"], 4)
        b, m = base["detection_hours"]["median"], s["detection_hours"]["median"]
        s["delay_vs_two_tier"] = round(m / b, 3) if b and m is not None else (1.0 if b == m else None)
    return {"setups": setups, "categories": len(FLEET), "days": days, "sample_rate": SAMPLE_RATE,
            "drifts": {str(i): {"kind": k, "start_day": d, "to": lvl} for i, (k, d, lvl) in DRIFTS.items()},
            "goals": {"cost_vs_two_tier": GOAL_COST, "delay_vs_two_tier": GOAL_DELAY,
                      "false_flips": "≤ two_tier", "hours_below_threshold": "≤ two_tier"}}
