"""``tierguard bench safety-net``: answer checks and escalation over a simulated month of the fleet.

The ladder benchmark's 30 categories (its volumes, calls a day), each served by Haiku with Opus as
the reference. Haiku also breaks answers (invalid JSON, labels outside the set, refusals,
truncations: every kind a check sees) at a per-category rate spread from 0 to 20 %; two
categories, at 1,000 calls an hour, step to 30 % broken answers (days 10.5 and 17). Minute by
minute, two set-ups:

- ``off``: no checks: every broken answer reaches a user until the agreement CUSUM (5 % of calls
  shadowed, a broken answer a disagreement; 0.97 agreement otherwise) demotes the category;
- ``on``: ``escalate_on`` every kind, ``max_escalation_rate`` 5 points above the category's
  usual rate (at most 25 %): every broken answer is escalated to Opus (both calls paid; 0.1 % of
  escalated calls fail, and then the user gets the broken answer), and the escalation CUSUM
  (:mod:`tierguard.engine.escalations`, the real one) demotes the category when it crosses.

``detection_minutes``: from each step to the demotion, plus the fold's delay (two minutes to
close a minute, one monitor period) for ``on``.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

import numpy as np

from tierguard.bench.ladder import FLEET, HAIKU, OPUS
from tierguard.engine.detector import Engine, EngineConfig, Situation, fresh_state
from tierguard.engine.escalations import Watch
from tierguard.policy import parse_policy

DAYS = 30
STEPS = {4: 10.5, 7: 17.0}  # category -> the day its broken answers step to 30 %
STEP_RATE, STEP_VOLUME = 0.30, 24_000  # 1,000 calls an hour
ESCALATION_FAILS = 0.001
SAMPLE_RATE, AGREEMENT = 0.05, 0.97
TOKENS = (600, 120)
FOLD_DELAY_MIN = 3.0  # a minute closes two minutes later; the monitor runs every minute
GOALS = {"bad_answers_on": 0, "cost_vs_off": 1.1, "detection_minutes": 10}


def _rate(index: int) -> float:
    return round(0.2 * index / (len(FLEET) - 1), 4) if index not in STEPS else 0.01


def _broken(index: int, minute: int) -> float:
    step = STEPS.get(index)
    return STEP_RATE if step is not None and minute >= step * 1440 else _rate(index)


def _volume(index: int) -> int:
    return STEP_VOLUME if index in STEPS else FLEET[index]


def _on(index: int, rng: np.random.Generator, prices: dict[str, float]) -> dict[str, Any]:
    base = _rate(index)
    watch = Watch(min(0.25, max(0.05, base + 0.05)))
    state, serving, found = None, HAIKU, None
    calls = rng.poisson(_volume(index) / 1440, DAYS * 1440)
    out = {"bad": 0, "usd": 0.0, "escalated": 0, "calls": int(calls.sum())}
    for minute, n in enumerate(calls.tolist()):
        if serving == OPUS:
            out["usd"] += n * prices[OPUS]
            continue
        broken = int(rng.binomial(n, _broken(index, minute)))
        out["bad"] += int(rng.binomial(broken, ESCALATION_FAILS))
        out["escalated"] += broken
        out["usd"] += n * prices[HAIKU] + broken * prices[OPUS]
        state, decision = watch.feed(state, 60.0 * minute, n, broken, serving=True)
        if decision is not None:
            serving, found = OPUS, minute
    return {**out, "demoted_at": found}


def _off(index: int, rng: np.random.Generator, prices: dict[str, float]) -> dict[str, Any]:
    engine, state, sit = Engine(EngineConfig()), fresh_state(), Situation("candidate", False, 0.0)
    calls = rng.poisson(_volume(index) / 1440, DAYS * 1440)
    out = {"bad": 0, "usd": 0.0, "escalated": 0, "calls": int(calls.sum()), "demoted_at": None}
    for minute, n in enumerate(calls.tolist()):
        served = HAIKU if out["demoted_at"] is None else OPUS
        out["usd"] += n * prices[served]
        if served == OPUS:
            continue
        broken = int(rng.binomial(n, _broken(index, minute)))
        out["bad"] += broken
        for agree in (rng.random(int(rng.binomial(n, SAMPLE_RATE))) < AGREEMENT).tolist():
            state, d = engine.update(state, bool(agree) and rng.random() >= _broken(index, minute), sit)
            if d.action == "demote":
                out["demoted_at"] = minute
                break
    return out


def safety_figures(seed: int = 28) -> dict[str, Any]:
    policy = parse_policy({})
    prices = {m: policy.cost_usd(m, *TOKENS) or 0.0 for m in (HAIKU, OPUS)}
    setups: dict[str, Any] = {}
    for name, run in (("off", _off), ("on", _on)):
        rows = [run(i, np.random.default_rng([seed, i]), prices) for i in range(len(FLEET))]
        delays = [(r["demoted_at"] - STEPS[i] * 1440) + (FOLD_DELAY_MIN if name == "on" else 0)
                  if r["demoted_at"] is not None and r["demoted_at"] >= STEPS[i] * 1440 else math.inf
                  for i, r in enumerate(rows) if i in STEPS]
        calls = sum(r["calls"] for r in rows)
        setups[name] = {
            "bad_answers_to_users": sum(r["bad"] for r in rows),
            "production_usd": round(sum(r["usd"] for r in rows), 2),
            "escalated_share": round(sum(r["escalated"] for r in rows) / calls, 4),
            "detection_minutes": {"median": statistics.median(delays), "max": max(delays)},
            "demoted_before_a_step": sum(1 for i, r in enumerate(rows) if r["demoted_at"] is not None
                                         and (i not in STEPS or r["demoted_at"] < STEPS[i] * 1440))}
    on, off = setups["on"], setups["off"]
    return {"days": DAYS, "categories": len(FLEET), "seed": seed, "setups": setups, "goals": GOALS,
            "cost_vs_off": round(on["production_usd"] / off["production_usd"], 4),
            "goals_met": (on["production_usd"] <= GOALS["cost_vs_off"] * off["production_usd"]
                          and on["detection_minutes"]["max"] <= GOALS["detection_minutes"])}
