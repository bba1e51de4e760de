"""Read-side queries for the CLI: per-category status and route history."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import select

from tierguard.db import Category, RouteChange, Sample, session
from tierguard.policy import Policy
from tierguard.recorder import rule_for


def category_status(engine: Engine, policy: Policy) -> dict[str, dict[str, Any]]:
    """Every known category (database and policy) with route, samples and agreement.

    ``agreement`` is over the decision rule's current window (null before any
    conclusive sample); ``samples`` counts every recorded sample, errors included.
    """
    with session(engine) as s:
        rows = {r.name: r for r in s.exec(select(Category))}
        counts = dict(s.exec(sa.select(Sample.category, sa.func.count())  # type: ignore[call-overload]
                             .group_by(Sample.category)).all())
        errors = dict(s.exec(sa.select(Sample.category, sa.func.count())  # type: ignore[call-overload]
                             .where(Sample.error.is_not(None)).group_by(Sample.category)).all())
        last = {}
        for change in s.exec(select(RouteChange).order_by(RouteChange.id)):
            last[change.category] = change
    out: dict[str, dict[str, Any]] = {}
    for name in sorted(set(rows) | set(policy.categories) | set(counts)):
        cat = policy.category(name)
        row = rows.get(name)
        rule = rule_for(cat)
        change = last.get(name)
        out[name] = {
            "route": row.routed_model if row else cat.initial_route,
            "candidate": cat.candidate,
            "reference": cat.reference,
            "samples": int(counts.get(name, 0)),
            "errors": int(errors.get(name, 0)),
            "agreement": rule.agreement(row.detector_state) if row else None,
            "threshold": cat.threshold,
            "sample_rate": cat.sample_rate,
            "pinned": bool(row and row.pinned),
            "pin_reason": row.pin_reason if row else None,
            "last_change": None if change is None else {
                "from": change.from_model, "to": change.to_model, "reason": change.reason,
                "actor": change.actor, "at": change.created_at.isoformat()},
        }
    return out


def history(engine: Engine, category: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    with session(engine) as s:
        q = select(RouteChange).order_by(RouteChange.id.desc()).limit(limit)  # type: ignore[union-attr]
        if category:
            q = q.where(RouteChange.category == category)
        return [{"id": c.id, "category": c.category, "from": c.from_model, "to": c.to_model,
                 "rule": c.rule, "reason": c.reason, "agreement": c.agreement,
                 "samples": c.samples, "actor": c.actor, "trigger_job_id": c.trigger_job_id,
                 "at": c.created_at.isoformat()} for c in s.exec(q)]
