"""``tierguard challenge status``: every challenger's standing per category, and the recommendation.

Per (challenger, category), from ``challenger_state`` (:mod:`tierguard.engine.challengers`): its
samples, agreement with the reference and with the rung in service, its verdict against that rung
(with the reason), whether it is eligible by the promotion rule, and what serving the category
from it would save a month (the category's calls a day over the last week × the difference in
cost per call at each model's recorded token sizes, as ``opportunities`` projects a rung's).
The recommendation per category is the cheapest model that holds — the reference, the rung in
service, a rung eligible on its own evidence, or an eligible challenger whose verdict is not
``worse`` — with its monthly saving over the rung in service.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import select

from tierguard.engine import challengers as evidence
from tierguard.engine.ladder import rung_state
from tierguard.ops.opportunities import DAYS_PER_MONTH, calls_per_day, token_sizes
from tierguard.policy import Policy
from tierguard.routing.challengers import challengers_of, rows
from tierguard.store.db import session
from tierguard.store.tables import Category, ChallengerState


class _Prices:
    """Cost per call of a model in a category (recorded token sizes), and the category's volume."""

    def __init__(self, engine: Engine, policy: Policy):
        self.policy, self.volume, self.sizes = policy, calls_per_day(engine), token_sizes(engine)

    def per_call(self, category: str, model: str) -> float | None:
        size = self.sizes.get((category, model))
        return self.policy.cost_usd(model, *(round(x) for x in size)) if size else None

    def saving(self, category: str, serving: str, model: str) -> float | None:
        """USD a month saved by serving ``category`` from ``model`` instead of ``serving``."""
        now, then = self.per_call(category, serving), self.per_call(category, model)
        calls = self.volume.get(category)
        if now is None or then is None or calls is None:
            return None
        return round((now - then) * calls * DAYS_PER_MONTH, 2)


def challenger_status(engine: Engine, policy: Policy) -> dict[str, Any]:
    """``{"challengers": {MODEL: {CATEGORY: {...}}}, "recommendations": {CATEGORY: {...}}}``."""
    with session(engine) as s:
        states = list(s.exec(select(ChallengerState)))
        routes = {r.name: r for r in s.exec(select(Category))}
    if not states:
        return {"challengers": {}, "recommendations": {}}
    prices = _Prices(engine, policy)
    active = rows(engine)
    out: dict[str, dict[str, Any]] = {}
    for st in sorted(states, key=lambda x: (x.model, x.category)):
        row = routes.get(st.category)
        serving = row.routed_model if row else policy.category(st.category).initial_route
        entry = _entry(policy, prices, st, serving)
        entry["active"] = st.model in dict(challengers_of(policy, active, st.category))
        out.setdefault(st.model, {})[st.category] = entry
    recommendations = {name: _recommend(policy, prices, name, routes.get(name), out)
                       for name in sorted({st.category for st in states})}
    return {"challengers": out, "recommendations": recommendations}


def by_category(found: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """:func:`challenger_status`'s figures per category: ``{CATEGORY: {"challengers": {MODEL: ...},
    "recommendation": {...}}}`` (what ``status --json`` shows)."""
    out: dict[str, dict[str, Any]] = {}
    for model, per_category in found["challengers"].items():
        for name, entry in per_category.items():
            out.setdefault(name, {"challengers": {}})["challengers"][model] = entry
    for name, recommendation in found["recommendations"].items():
        out.setdefault(name, {"challengers": {}})["recommendation"] = recommendation
    return out


def _entry(policy: Policy, prices: _Prices, st: ChallengerState, serving: str) -> dict[str, Any]:
    cat, state = policy.category(st.category), st.state or {}
    found = evidence.verdict(state, cat.reference, cat.threshold, cat.min_samples)
    n, sn = state.get("n", 0), state.get("sn", 0)
    return {"samples": n, "agreement_with_reference": state.get("a", 0) / n if n else None,
            "agreement_with_serving": state.get("sa", 0) / sn if sn else None,
            "serving": state.get("serving") or serving, "verdict": found.name, "reason": found.reason,
            "eligible": evidence.eligible(state),
            "saving_usd_month": prices.saving(st.category, serving, st.model)}


def _recommend(policy: Policy, prices: _Prices, name: str, row: Category | None,
               found: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The cheapest model that holds in ``name`` and what it saves over the rung in service."""
    cat = policy.category(name)
    serving = row.routed_model if row else cat.initial_route
    holds = {cat.reference: "the reference", serving: "in service"}
    states = ((row.detector_state if row else None) or {})
    rungs = states.get("rungs") or ({cat.candidate: states} if not cat.laddered else {})
    for model in cat.rungs[:-1]:
        if rung_state(rungs, serving, model) == "eligible":
            holds.setdefault(model, "a rung eligible on its own evidence")
    for model, per_category in found.items():
        entry = per_category.get(name)
        if entry and entry["eligible"] and entry["verdict"] != "worse":
            holds.setdefault(model, f"a challenger, {entry['verdict']}")
    costs = {m: prices.per_call(name, m) for m in holds}
    known = {m: c for m, c in costs.items() if c is not None}
    pick = min(known, key=known.__getitem__) if known else serving
    return {"model": pick, "why": holds[pick], "serving": serving,
            "saving_usd_month": prices.saving(name, serving, pick) if pick != serving else 0.0}
