"""``tierguard opportunities``: the playbook's "top request types" table, and ``evaluate --apply``.

Per category, by production volume (the folded traffic counters): its route,
live and evaluation agreement, eligibility, and what serving it from the
candidate would save a month at the prices in the policy and the token sizes
recorded for each model.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import redis as redis_lib
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import select

from tierguard.alerts.events import for_route_change
from tierguard.engine.ladder import rung_state
from tierguard.errors import TierguardError
from tierguard.ops.actions import noted
from tierguard.policy import Policy
from tierguard.routing.routes import change_route, lock_category, publish_quietly
from tierguard.store.db import session, utcnow
from tierguard.store.tables import Category, RouteChange, Sample
from tierguard.store.traffic import totals

DAYS_PER_MONTH = 30
VOLUME_DAYS = 7


def calls_per_day(engine: Engine, category: str | None = None,
                  now: dt.datetime | None = None) -> dict[str, float]:
    """Production calls a day per category, averaged over the last week of folded counters."""
    found = totals(engine, (now or utcnow()) - dt.timedelta(days=VOLUME_DAYS))
    return {c: v["calls"] / VOLUME_DAYS for c, v in found.items() if category in (None, c)}


def token_sizes(engine: Engine) -> dict[tuple[str, str], tuple[float, float]]:
    """(category, model) -> average (input, output) tokens per call, from recorded samples."""
    out: dict[tuple[str, str], tuple[float, float]] = {}
    with session(engine) as s:
        for model_col, inp, outp in ((Sample.served_model, Sample.primary_input_tokens,
                                      Sample.primary_output_tokens),
                                     (Sample.shadow_model, Sample.shadow_input_tokens,
                                      Sample.shadow_output_tokens)):
            q = (sa.select(Sample.category, model_col, sa.func.avg(inp), sa.func.avg(outp))
                 .where(inp.is_not(None), outp.is_not(None)).group_by(Sample.category, model_col))
            for category, model, i, o in s.execute(q).all():
                out.setdefault((category, model), (float(i), float(o)))
    return out


def opportunities(engine: Engine, policy: Policy) -> list[dict[str, Any]]:
    volume = calls_per_day(engine)
    sizes = token_sizes(engine)
    with session(engine) as s:
        rows = {r.name: r for r in s.exec(select(Category))}
        evaluation: dict[str, tuple[int, int]] = {}
        for c, served, shadowed, n, a in s.execute(  # the candidate's cases (a ladder has more rungs)
                sa.select(Sample.category, Sample.served_model, Sample.shadow_model, sa.func.count(),
                          sa.func.sum(sa.cast(Sample.agree, sa.Integer)))
                .where(Sample.kind == "evaluation", Sample.agree.is_not(None))
                .group_by(Sample.category, Sample.served_model, Sample.shadow_model)):
            if policy.category(c).candidate in (served, shadowed):
                old_n, old_a = evaluation.get(c, (0, 0))
                evaluation[c] = (old_n + int(n), old_a + int(a or 0))
    out = []
    for name in sorted(set(volume) | set(rows) | set(policy.categories)):
        cat = policy.category(name)
        row = rows.get(name)
        state = (row.detector_state if row else None) or {}
        per_call = {}
        for model in (cat.candidate, cat.reference):
            size = sizes.get((name, model))
            per_call[model] = policy.cost_usd(model, *(round(x) for x in size)) if size else None
        saving = None
        if volume.get(name) is not None and None not in per_call.values():
            saving = round((per_call[cat.reference] - per_call[cat.candidate]) * volume[name]
                           * DAYS_PER_MONTH, 2)
        n, a = evaluation.get(name, (0, 0))
        entry_rungs = {}
        if cat.laddered:  # what each rung would save on the reference at this volume and size
            size = next((sizes[(name, m)] for m in cat.rungs if (name, m) in sizes), None)
            states = state.get("rungs") or {}
            for model in cat.rungs[:-1]:
                st = states.get(model) or {}
                prices = [policy.cost_usd(m, *(round(x) for x in size)) if size else None
                          for m in (model, cat.reference)]
                entry_rungs[model] = {
                    "state": rung_state(states, row.routed_model if row
                                                        else cat.initial_route, model),
                    "agreement": st.get("ewma"),
                    "projected_monthly_savings_usd": (
                        round((prices[1] - prices[0]) * volume[name] * DAYS_PER_MONTH, 2)
                        if None not in prices and volume.get(name) is not None else None)}
        out.append({"category": name, "calls_per_day": round(volume.get(name, 0.0), 1),
                    "route": row.routed_model if row else cat.initial_route,
                    "candidate": cat.candidate, "reference": cat.reference,
                    "agreement": state.get("ewma"), "evaluation_agreement": a / n if n else None,
                    "evaluation_cases": n, "eligible": bool(state.get("eligible")),
                    "projected_monthly_savings_usd": saving,
                    # Not in the policy: served with the caller's model until a route is chosen.
                    "listed": name in policy.categories,
                    "follows_caller": cat.follows_caller and (row is None or row.version <= 1),
                    **({"rungs": entry_rungs} if entry_rungs else {})})
    out.sort(key=lambda o: -o["calls_per_day"])
    return out


class ApplyRefused(TierguardError):
    """``evaluate --apply`` does not apply to the category's state."""


def apply_recommendation(engine: Engine, r: redis_lib.Redis | None, policy: Policy,
                         result: dict[str, Any]) -> RouteChange | None:
    """Route the category to the recommended rung (audited, actor ``evaluate``) when it is not the
    reference; for two models, its candidate."""
    cat = policy.category(result["category"])
    target = result.get("recommended_model") or (cat.candidate if result["recommendation"] == "candidate"
                                                 else cat.reference)
    if target == cat.reference:
        return None
    figures = (result.get("rungs") or {}).get(target) or result
    with session(engine) as s:
        row = lock_category(s, cat)
        if row.pinned:
            raise ApplyRefused(f"{cat.name} is pinned ({row.pin_reason}): unpin it first")
        if row.routed_model == target:
            return None
        if row.routed_model in cat.rungs and cat.rungs.index(target) > cat.rungs.index(row.routed_model):
            return None  # never a dearer rung: that is the engine's to decide on live evidence
        row.detector_state = noted(cat, dict(row.detector_state or {}), target, utcnow().timestamp())
        compared = figures.get("compared", result["compared"])
        whose = f"{target} agreement" if cat.laddered else "agreement"
        reason = (f"evaluation {result['run']}: {compared} cases, {whose} "
                  f"{figures['agreement']:.3f}, Wilson 95% lower bound {figures['wilson_low']:.3f} ≥ "
                  f"promote threshold {cat.promote_threshold:.2f}")
        change = change_route(s, row, target, rule="evaluation", actor="evaluate",
                              reason=reason, agreement=figures["agreement"], samples=compared,
                              numbers={"wilson_low": figures["wilson_low"],
                                       "wilson_high": figures["wilson_high"], "cases": result["cases"]})
        for_route_change(s, policy, change, "promoted")
        s.commit()
    publish_quietly(r, [row], force=True)  # whatever Redis held: the database's route
    return change
