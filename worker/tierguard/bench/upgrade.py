"""``tierguard bench upgrade``: a new cheap model released mid-quarter, switched to at once or challenged.

A simulated quarter (90 days) of the ladder benchmark's 30-category fleet (its volumes and token
sizes; Haiku/Sonnet/Opus ladders, ``demote_to: reference``, auto-promotion, 5 % shadowed, probes),
each category on its right rung from the start (the ladder benchmark's groups without its drifts:
a third on Haiku, a third on Sonnet, a third on Opus). On day 30 ``claude-haiku-5`` is released,
priced below Haiku. Its true agreement with the reference holds (0.97) for the even-numbered half
of the categories — on every rung — and fails (0.80 to 0.85) for the rest. Hour by hour, the real
engine objects on simulated outcomes, for two set-ups:

- ``manual``: on release the new model becomes every ladder's cheapest rung and every category's
  route (a user switching to the new cheap model, noted for cooldown and flap guard as
  ``tierguard promote`` notes it); the ladder's demotion CUSUM must catch the categories it fails,
  and the promotion machinery climbs back down as in the ladder benchmark (a flap-guard pin is
  counted, not held: while pins recur, the category stays on the reference);
- ``manual_no_flap_guard``: the same with a ``flap_limit`` never reached, so a demoted category
  climbs back as soon as its evidence allows (manual's cheapest case);
- ``challenger``: on release it is challenged on ``challenge_rate`` (0.2) of the sampled jobs
  (:mod:`tierguard.engine.challengers`: ``feed``, ``verdict``, ``eligible`` with the category's
  ``challenge_engine``), and when it becomes eligible, is not ``worse`` and is cheaper than the
  rung in service, rolled out as ``auto_rollout`` does (:mod:`tierguard.engine.rollouts`: steps
  5, 25, 50, 100 %, an hour and 100 comparisons each, ``fed`` for its CUSUM on its share, ``due``,
  ``weight``). Not listed in the ladder, a finished rollout holds at 100 % (still gated), as the
  real one does until the user adds the model to the ladder.

Each model's outcomes in a category are one seeded stream, so both set-ups see the same ones.
Two models that both disagree with the reference agree with each other half the time.
``bad_calls_served``: production calls (expected counts) answered by a model whose true agreement
in their category is below the threshold; ``days_to_first_saving``: from the release to the first
category served, wholly or by a rollout's share, by the new model at a lower price than before.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from tierguard.bench.ladder import FLEET, GROUPS, HAIKU, OPUS, SAMPLE_RATE, SONNET, fleet_tokens
from tierguard.bench.stats import binomial
from tierguard.engine import challengers as evidence
from tierguard.engine import rollouts as plan
from tierguard.policy import CategoryPolicy, Policy, parse_policy
from tierguard.routing.routes import noted

NEW = "claude-haiku-5"
NEW_PRICE = {"input": 0.5, "output": 2.5}
DAYS, RELEASE_DAY = 90, 30
HOLDS, FAILS = 0.97, (0.80, 0.85)  # the new model's true agreement where it holds / fails
BOTH_WRONG_AGREE = 0.5
STEP_MINUTES, STEP_SAMPLES = 60.0, 100
NO_FLAP_GUARD = 1_000_000  # a flap_limit never reached
# set-up -> (what the user does on release, the policy's flap_limit or None for the default)
SETUPS = {"manual": ("switch", None), "manual_no_flap_guard": ("switch", NO_FLAP_GUARD),
          "challenger": ("challenge", None)}
GOALS = {"bad_calls_vs_manual": 0.1, "cost_vs_manual": 1.05, "days_to_first_saving": 7}


def holds(index: int) -> bool:
    """Whether the new model holds in category ``index`` (the even-numbered half: every rung)."""
    return index % 2 == 0


def level(index: int, model: str) -> float:
    """A model's true agreement with the reference in category ``index``."""
    if model == OPUS:
        return 1.0
    if model == NEW:
        return HOLDS if holds(index) else round(FAILS[0] + 0.01 * ((index // 2) % 6), 2)
    return GROUPS[index % 3][model]


def start_rung(index: int) -> str:
    """The category's right rung before the release (Haiku, Sonnet or Opus by its group)."""
    return (HAIKU, SONNET, OPUS)[index % 3]


def bench_policy(ladder: list[str], challengers: list[str], flap_limit: int | None = None) -> Policy:
    """The ladder benchmark's policy, with the new model priced (and challenging, if listed)."""
    flap = {} if flap_limit is None else {"flap_limit": flap_limit}
    pricing = {HAIKU: {"input": 1.0, "output": 5.0}, SONNET: {"input": 3.0, "output": 15.0},
               OPUS: {"input": 5.0, "output": 25.0}, NEW: NEW_PRICE}
    return parse_policy({"pricing": pricing, "models": {"ladder": ladder}, "challengers": challengers,
                         "categories": {"bench": {}}, "defaults": {
                             "auto_promote": True, "demote_to": "reference", "sample_rate": SAMPLE_RATE,
                             **flap}})


@dataclass
class Rollout:
    """A running (or ended) rollout of the new model, as the ``rollout`` table holds it."""

    base: str
    started: float
    step: int = 0
    samples: int = 0
    status: str = "running"
    state: dict | None = None

    def share(self) -> float:
        return plan.weight(plan.DEFAULT_STEPS, self.step, self.status)


class Category:
    """One category through the quarter under one set-up."""

    def __init__(self, setup: str, index: int, volume: int, tokens: tuple[int, int], seed: int,
                 release_h: int):
        self.index, self.volume, self.release_h = index, volume, release_h
        self.action, self.flap_limit = SETUPS[setup]
        challengers = [NEW] if self.action == "challenge" else []
        self.policy = bench_policy([HAIKU, SONNET, OPUS], challengers, self.flap_limit)
        self.cat: CategoryPolicy = self.policy.category("bench")
        self.price = {m: self.policy.cost_usd(m, *tokens) or 0.0 for m in (NEW, HAIKU, SONNET, OPUS)}
        self.streams = {m: random.Random(f"{seed}|{index}|{m}") for m in (NEW, HAIKU, SONNET)}
        self.rng = {k: random.Random(f"{seed}|{index}|{k}") for k in ("sampling", "probe", "split",
                                                                        "challenge", "pair")}
        self.serving, self.states = start_rung(index), {}
        self.challenger: dict | None = None
        self.rollout: Rollout | None = None
        self.out = {"production_usd": 0.0, "bad_calls": 0.0, "watching_usd": 0.0, "challenger_usd": 0.0,
                    "first_saving_h": None, "rollbacks": 0, "rollouts": 0, "flips": 0, "pins": 0}

    def run(self, days: int) -> dict[str, Any]:
        for hour in range(days * 24):
            self.hour(hour)
        new_share = 1.0 if self.serving == NEW else (self.rollout.share() if self.rollout else 0.0)
        return {**self.out, "serving": self.serving, "new_share": new_share}

    def hour(self, hour: int) -> None:
        now = hour * 3600.0
        if hour == self.release_h:
            self.release(now)
        if self.rollout is not None:
            self.advance(now)
        calls, w = self.volume / 24, self.rollout.share() if self.rollout else 0.0
        threshold = self.cat.threshold
        self.out["production_usd"] += calls * ((1 - w) * self.price[self.serving] + w * self.price[NEW])
        self.out["bad_calls"] += calls * ((1 - w) * (level(self.index, self.serving) < threshold)
                                          + w * (level(self.index, NEW) < threshold))
        n = binomial(self.rng["sampling"], calls, SAMPLE_RATE)
        for j in range(n):
            self.job(now + 3600.0 * (j + 1) / (n + 1))

    def release(self, now: float) -> None:
        """The new model is out: the user switches every route to it, or it is challenged."""
        if self.action == "switch":
            self.policy = bench_policy([NEW, HAIKU, SONNET, OPUS], [], self.flap_limit)
            self.cat = self.policy.category("bench")
            self.states = noted(self.cat, {"rungs": self.states}, NEW, now)["rungs"]  # as `promote` does
            self.saving(now, self.serving)
            self.serving = NEW
        else:
            self.challenger = evidence.fresh(self.serving)

    def saving(self, now: float, before: str) -> None:
        if self.out["first_saving_h"] is None and self.price[NEW] < self.price[before]:
            self.out["first_saving_h"] = now / 3600.0 - self.release_h

    def job(self, now: float) -> None:
        """One sampled call: served by the new model on a rollout's share, else by the route."""
        r = self.rollout
        if r is not None and self.rng["split"].random() < r.share():
            self.rollout_job(r, now)
            return
        served = self.serving
        served_agreed = self.ladder_job(now)
        if self.challenger is not None and self.rng["challenge"].random() < self.cat.challenge_rate:
            self.challenge(served, served_agreed, now)

    def outcome(self, model: str) -> bool:
        return model == OPUS or self.streams[model].random() < level(self.index, model)

    def ladder_job(self, now: float) -> bool:
        """The job's shadow (and probe) fed to the ladder, as the ladder benchmark does; whether the
        model that served it agreed with the reference."""
        cat, serving = self.cat, self.serving
        shadowed = cat.other_model(serving)
        compared = [serving if serving != cat.reference else shadowed]
        self.out["watching_usd"] += self.price[shadowed]
        if self.rng["probe"].random() < cat.probe_rate:
            choices = [m for m in cat.rungs[:-1] if m not in (serving, shadowed)]
            if choices:
                compared.append(choices[self.rng["probe"].randrange(len(choices))])
                self.out["watching_usd"] += self.price[compared[-1]]
        first = None
        for rung in compared:
            agree = self.outcome(rung)
            first = agree if first is None else first
            self.states, move = cat.ladder_engine.update(self.states, serving, rung, agree, False, now)
            self.out["pins"] += move.decision.pin
            if move.target is not None and move.decision.applied and move.target != serving:
                self.moved(move.target)
                break
        return True if serving == cat.reference else bool(first)

    def moved(self, target: str) -> None:
        """The ladder moved the route: a live rollout from the old one is aborted (as beat does)."""
        self.serving = target
        self.out["flips"] += 1
        if self.rollout is not None and self.rollout.status in plan.LIVE:
            self.rollout.status = "aborted"

    def challenge(self, served: str, served_agreed: bool, now: float) -> None:
        """The challenger answers the job too: its evidence fed, a rollout begun when it is due."""
        self.out["challenger_usd"] += self.price[NEW]
        with_reference = self.outcome(NEW)
        if served == self.cat.reference:
            x = evidence.Outcome(served, with_reference, with_reference, True)
        else:
            both_wrong = not with_reference and not served_agreed
            with_serving = (with_reference and served_agreed) or (
                both_wrong and self.rng["pair"].random() < BOTH_WRONG_AGREE)
            x = evidence.Outcome(served, with_reference, with_serving, served_agreed)
        self.challenger, decision = evidence.feed(self.challenger, self.cat.challenge_engine, x, now)
        if decision is not None:
            self.auto_rollout(served, now)

    def auto_rollout(self, served: str, now: float) -> None:
        """``auto_rollout``: an eligible challenger not ``worse`` and cheaper than the model in
        service is rolled out in the default steps, unless a rollout is live."""
        cat, pricing = self.cat, self.policy.pricing
        if evidence.verdict(self.challenger, cat.reference, cat.threshold, cat.min_samples).name == "worse":
            return
        new, old = pricing[NEW], pricing[served]
        if new.input + new.output >= old.input + old.output:
            return
        if (self.rollout is not None and self.rollout.status in plan.LIVE) or self.serving == NEW:
            return
        self.rollout = Rollout(base=self.serving, started=now, state={})
        self.out["rollouts"] += 1
        self.saving(now, self.serving)

    def rollout_job(self, r: Rollout, now: float) -> None:
        """A call on the rollout's share, shadowed to the reference: its CUSUM gates the rollout."""
        self.out["watching_usd"] += self.price[self.cat.reference]
        r.samples += 1
        r.state, move = plan.fed(self.cat.engine, r.state or {}, self.outcome(NEW), now)
        if move is not None:
            r.status = "rolled_back"
            self.out["rollbacks"] += 1
            return
        self.advance(now)

    def advance(self, now: float) -> None:
        r = self.rollout
        if r is None or r.status != "running":
            return
        move = plan.due(plan.DEFAULT_STEPS, r.step, r.started, r.samples, now, STEP_MINUTES, STEP_SAMPLES,
                        listed=NEW in self.cat.rungs)
        if move.action == "advance":
            r.step, r.samples, r.started = move.step or 0, 0, now


def run_setup(setup: str, fleet: list[tuple[int, int]], seed: int, days: int,
              release_day: int) -> dict[str, Any]:
    rows = [Category(setup, i, volume, fleet[i], seed, release_day * 24).run(days)
            for i, volume in enumerate(FLEET)]
    firsts = [r["first_saving_h"] for r in rows if r["first_saving_h"] is not None]
    return {"production_usd": round(sum(r["production_usd"] for r in rows), 2),
            "bad_calls_served": round(sum(r["bad_calls"] for r in rows)),
            "days_to_first_saving": round(min(firsts) / 24, 3) if firsts else None,
            "rollbacks": sum(r["rollbacks"] for r in rows),
            "watching_usd": round(sum(r["watching_usd"] for r in rows), 2),
            "challenger_usd": round(sum(r["challenger_usd"] for r in rows), 2),
            "rollouts_started": sum(r["rollouts"] for r in rows),
            "route_changes": sum(r["flips"] for r in rows),
            "flap_guard_pins": sum(r["pins"] for r in rows),
            "categories_on_new": sum(1 for r in rows if r["new_share"] > 0),
            "categories_bad_served": sum(1 for i, r in enumerate(rows)
                                         if r["bad_calls"] > 0 and not holds(i))}


def upgrade_figures(seed: int = 29, days: int = DAYS, release_day: int = RELEASE_DAY,
                    setups: tuple[str, ...] = tuple(SETUPS)) -> dict[str, Any]:
    """The set-ups over ``days`` with the new model released on ``release_day``; the goals (when
    ``manual`` and ``challenger`` both ran)."""
    if not 0 < release_day < days:
        raise ValueError(f"release_day: {release_day} is not a day inside the {days} simulated")
    unknown = [name for name in setups if name not in SETUPS]
    if unknown:
        raise ValueError(f"setups: {', '.join(unknown)} (known: {', '.join(SETUPS)})")
    fleet = fleet_tokens(seed)
    figures = {name: run_setup(name, fleet, seed, days, release_day) for name in setups}
    policy = bench_policy([HAIKU, SONNET, OPUS], [])
    unchanged = sum(v * days * (policy.cost_usd(start_rung(i), *fleet[i]) or 0.0)
                    for i, v in enumerate(FLEET))
    out = {"setups": figures, "seed": seed, "days": days, "release_day": release_day,
           "categories": len(FLEET), "new_model": NEW, "new_price": NEW_PRICE,
           "holds_in": [i for i in range(len(FLEET)) if holds(i)],
           "production_usd_without_new_model": round(unchanged, 2), "goals": GOALS}
    if "manual" in figures and "challenger" in figures:
        out.update(goals_met(figures["manual"], figures["challenger"]))
        if "manual_no_flap_guard" in figures:
            unguarded = figures["manual_no_flap_guard"]
            out["cost_vs_manual_no_flap_guard"] = ratio(figures["challenger"], unguarded, "production_usd")
    return out


def ratio(a: dict[str, Any], b: dict[str, Any], key: str) -> float:
    """``a[key] / b[key]`` (0 when both are 0)."""
    return round(a[key] / b[key], 4) if b[key] else (0.0 if not a[key] else float("inf"))


def goals_met(manual: dict[str, Any], challenger: dict[str, Any]) -> dict[str, Any]:
    """The challenger set-up against the goals (its bad calls and spend as multiples of manual's)."""
    bad, cost = ratio(challenger, manual, "bad_calls_served"), ratio(challenger, manual, "production_usd")
    first = challenger["days_to_first_saving"]
    met = {"bad_calls_vs_manual": bad <= GOALS["bad_calls_vs_manual"],
           "cost_vs_manual": cost <= GOALS["cost_vs_manual"],
           "days_to_first_saving": first is not None and first <= GOALS["days_to_first_saving"]}
    return {"bad_calls_vs_manual": bad, "cost_vs_manual": cost, "goals_met": met,
            "all_goals_met": all(met.values())}
