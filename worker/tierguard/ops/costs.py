"""``tierguard costs``: what production and watching cost, measured, and what the candidate saves.

Production spend is the tokens the wrappers and gateways counted on every call
(``traffic``, folded per minute by beat), priced with the policy's prices, cache
tokens included, when folded (as the dashboard reads them); nothing is
extrapolated from samples. Shadow spend is what the recorded shadow, noise-floor, probe,
sentinel, challenger and judge calls cost (``sample``). The saving is what the calls served
by each category's candidate would have cost on its reference, minus what they cost, minus
what the escalated calls cost (an escalated call pays for a cheap answer and a second one).
``escalated_usd`` is the escalated calls' spend (issue 28's safety net),
already in ``production_usd``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tierguard.policy import Policy
from tierguard.store.db import session
from tierguard.store.tables import Sample, Traffic
from tierguard.store.traffic import ESCALATED_TOKENS, TOKENS

SHADOW_KINDS = ("shadow", "noise", "probe", "sentinel", "challenger")


def _empty() -> dict[str, float]:
    return {"production_usd": 0.0, "shadow_usd": 0.0, "sync_usd": 0.0, "batch_usd": 0.0,
            "noise_usd": 0.0, "probe_usd": 0.0, "sentinel_usd": 0.0, "challenger_usd": 0.0,
            "judge_usd": 0.0, "savings_usd": 0.0, "escalated_usd": 0.0, "calls": 0,
            "escalated_calls": 0, "calls_without_usage": 0}


def costs(engine: Engine, policy: Policy, since: dt.datetime, now: dt.datetime) -> dict[str, Any]:
    cats: dict[str, dict[str, float]] = {}
    with session(engine) as s:
        # Rows priced when folded keep that price (as the dashboard shows them); rows folded
        # without one are priced here with the policy's prices.
        priced = Traffic.cost_usd.is_not(None)
        traffic = s.execute(
            sa.select(Traffic.category, Traffic.model, priced, sa.func.sum(Traffic.calls),
                      sa.func.sum(Traffic.cost_usd), sa.func.sum(Traffic.reference_cost_usd),
                      sa.func.sum(Traffic.escalated_cost_usd), sa.func.sum(Traffic.escalated_calls),
                      *[sa.func.sum(getattr(Traffic, t)) for t in (*TOKENS, *ESCALATED_TOKENS)])
            .where(Traffic.minute >= since)
            .group_by(Traffic.category, Traffic.model, priced)).all()
        no_usage = dict(s.execute(
            sa.select(Traffic.category, sa.func.sum(Traffic.calls))
            .where(Traffic.minute >= since, Traffic.input_tokens == 0, Traffic.output_tokens == 0)
            .group_by(Traffic.category)).all())
        shadow = s.execute(
            sa.select(Sample.category, Sample.kind, Sample.shadow_via,
                      sa.func.sum(sa.func.coalesce(Sample.shadow_cost_usd, 0)),
                      sa.func.sum(sa.func.coalesce(Sample.judge_cost_usd, 0)))
            .where(Sample.created_at >= since, Sample.kind.in_(SHADOW_KINDS))
            .group_by(Sample.category, Sample.kind, Sample.shadow_via)).all()
    for row in traffic:
        _add_traffic(cats.setdefault(row[0], _empty()), policy, *row)
    for name, calls in no_usage.items():
        cats.setdefault(name, _empty())["calls_without_usage"] = int(calls or 0)
    for name, kind, via, shadow_usd, judge_usd in shadow:
        entry = cats.setdefault(name, _empty())
        part = (f"{kind}_usd" if kind in ("noise", "probe", "sentinel", "challenger")
                else "batch_usd" if via == "batch" else "sync_usd")
        entry[part] += float(shadow_usd or 0)
        entry["judge_usd"] += float(judge_usd or 0)
        entry["shadow_usd"] += float(shadow_usd or 0) + float(judge_usd or 0)
    days = max((now - since).total_seconds() / 86400, 1 / 1440)
    total = _empty()
    for entry in cats.values():
        for key in total:
            total[key] += entry[key]
    out = {name: _finish(entry, days) for name, entry in sorted(cats.items())}
    return {"since": since.isoformat(), "days": round(days, 3), "categories": out,
            "total": _finish(total, days)}


def _add_traffic(entry: dict[str, float], policy: Policy, name: str, model: str, was_priced: bool,
                 calls: int, cost: float, reference_cost: float, escalated_cost: float,
                 escalated_calls: int, *counts: int) -> None:
    """One (category, model, priced) group of traffic rows added to its category's ``entry``."""
    tokens = [int(t or 0) for t in counts[:len(TOKENS)]]
    escalated_tokens = [int(t or 0) for t in counts[len(TOKENS):]]
    cat = policy.category(name)
    if was_priced:
        spent, on_reference = float(cost or 0), float(reference_cost or 0)
        escalated = float(escalated_cost or 0)
    else:
        spent = policy.cost_usd(model, *tokens) or 0.0
        on_reference = policy.cost_usd(cat.reference, *tokens) or 0.0
        escalated = policy.cost_usd(model, *escalated_tokens) or 0.0
    entry["production_usd"] += spent
    entry["calls"] += int(calls or 0)
    entry["escalated_usd"] += escalated
    entry["escalated_calls"] += int(escalated_calls or 0)
    entry["savings_usd"] -= escalated  # the cheap answer it replaced was paid for as well
    if model in cat.rungs[:-1]:  # served by a rung cheaper than the reference (not its escalated
        # calls, escalate_to: next: those replaced a cheap answer already counted)
        escalated_on_reference = policy.cost_usd(cat.reference, *escalated_tokens) or 0.0
        entry["savings_usd"] += (on_reference - escalated_on_reference) - (spent - escalated)


def _finish(entry: dict[str, float], days: float) -> dict[str, Any]:
    production = entry["production_usd"]
    done: dict[str, Any] = {k: round(v, 9) if isinstance(v, float) else v for k, v in entry.items()}
    done["watching_share"] = round(entry["shadow_usd"] / production, 4) if production else None
    done["projection_30d"] = {k: round(entry[k] * 30 / days, 2)
                              for k in ("production_usd", "shadow_usd", "savings_usd", "escalated_usd")}
    return done
