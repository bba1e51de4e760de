"""Read-side queries for the CLI: per-category status and route history."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import select

from tierguard.alerts.monitors import noise_warning, self_agreement
from tierguard.engine.fingerprints import KEY as TRACKED
from tierguard.engine.fingerprints import summary as fingerprint
from tierguard.engine.ladder import rung_state
from tierguard.ops.challengers import by_category, challenger_status
from tierguard.ops.rollouts import status as rollout_status
from tierguard.policy import Policy
from tierguard.store.db import session, utcnow
from tierguard.store.tables import Category, Event, RouteChange, Sample
from tierguard.store.traffic import escalations
from tierguard.store.traffic import totals as traffic_totals

STATUS_DAYS = 30  # production counters (guarded) are summed over this window


def _counts(s, *where) -> dict[str, int]:
    q = sa.select(Sample.category, sa.func.count()).where(*where).group_by(Sample.category)
    return {name: int(n) for name, n in s.execute(q).all()}


def category_status(engine: Engine, policy: Policy) -> dict[str, dict[str, Any]]:
    """Every known category (database and policy): route, samples, agreement, engine numbers.

    ``agreement`` is an exponentially weighted average over about the last 200
    conclusive comparisons (null before any); ``samples`` counts every recorded
    shadow sample, errors included.
    """
    with session(engine) as s:
        rows = {r.name: r for r in s.exec(select(Category))}
        counts = _counts(s, Sample.kind == "shadow")
        errors = _counts(s, Sample.kind == "shadow", Sample.error.is_not(None),
                         Sample.error != "skipped")
        skipped = _counts(s, Sample.kind == "shadow", Sample.error == "skipped")
        judge_cost = dict(s.execute(sa.select(Sample.category, sa.func.sum(Sample.judge_cost_usd))
                                    .group_by(Sample.category)).all())
        last: dict[str, RouteChange] = {}
        would: dict[str, int] = {}
        for change in s.exec(select(RouteChange).order_by(RouteChange.id)):
            if change.applied:
                last[change.category] = change
            else:
                would[change.category] = would.get(change.category, 0) + 1
        compared = s.execute(
            sa.select(Sample.category, Sample.served_model, Sample.shadow_model, Sample.rung,
                      sa.func.count())
            .where(Sample.kind.in_(("shadow", "probe")), Sample.agree.is_not(None),
                   Sample.created_at >= utcnow() - dt.timedelta(days=STATUS_DAYS))
            .group_by(Sample.category, Sample.served_model, Sample.shadow_model, Sample.rung)).all()
        names = sorted(set(rows) | set(policy.categories) | set(counts))
        noise = {name: self_agreement(s, name) for name in names}
    guarded = traffic_totals(engine, utcnow() - dt.timedelta(days=STATUS_DAYS))
    from tierguard.routing.rates import choose_all

    chosen = choose_all(engine, policy)  # what beat publishes for adaptive categories
    from tierguard.store.batch_jobs import summary as batch_summary

    batched = batch_summary(engine)
    per_rung: dict[tuple[str, str], int] = {}
    for name, served, shadowed, rung, n in compared:
        reference = policy.category(name).reference  # before revision 0012: derived
        rung = rung or (shadowed if served == reference else served)
        per_rung[(name, rung)] = per_rung.get((name, rung), 0) + int(n)
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        cat = policy.category(name)
        row = rows.get(name)
        state = row.detector_state if row else {}
        design = cat.engine.design
        change = last.get(name)
        self_agree, noise_n = noise[name]
        warning = noise_warning(cat, self_agree, noise_n)
        warnings = [warning] if warning else []
        route = row.routed_model if row else cat.initial_route
        out[name] = {
            "route": route,
            "candidate": cat.candidate,
            "reference": cat.reference,
            "samples": counts.get(name, 0),
            "errors": errors.get(name, 0),
            "skipped": skipped.get(name, 0),
            "guarded": guarded.get(name, {}).get("guarded", 0),
            "escalations": {**escalations(guarded.get(name, {})),
                            "statistic": {m: cat.escalation_watch.statistic(st)
                                          for m, st in (row.escalation_state if row else {}).items()}},
            "judge_cost_usd": round(judge_cost.get(name) or 0.0, 6),
            "agreement": state.get("ewma"),
            "threshold": cat.threshold,
            "mode": cat.mode,
            "sampling": cat.sampling,
            "sample_rate": chosen[name].rate if name in chosen else cat.sample_rate,
            "sample_rate_reason": chosen[name].reason if name in chosen else "fixed sample_rate",
            "shadow_via": cat.shadow_via,
            "batch": batched.get(name, {"waiting": 0, "in_batches": 0, "open": 0}),
            "pinned": bool(row and row.pinned),
            "pin_reason": row.pin_reason if row else None,
            "pinned_until": row.pinned_until.isoformat() if row and row.pinned_until else None,
            "watching": {"demote": "candidate quality (CUSUM)",
                         "promote": "recovery for promotion"}.get(state.get("dir"), "—"),
            "statistic": cat.engine.statistic(state),
            "flip_threshold": {"h_units": design.h, "h_nats": round(design.h * design.unit, 3),
                               "healthy": design.healthy, "detect": design.detect,
                               "false_flip_rate": design.false_flip_rate,
                               "per_samples": design.horizon},
            "eligible": bool(state.get("eligible")),
            "promotion": cat.engine.promotion(state),
            "would_flip": would.get(name, 0),
            "self_agreement": self_agree,
            "warnings": warnings,
            "rungs": rungs(cat, row.routed_model if row else cat.initial_route, state, change,
                           {m: per_rung.get((name, m), 0) for m in cat.rungs}),
            "fingerprint": fingerprint(state.get(TRACKED), route),
            **retiring_now(policy, [route, *cat.rungs]),
            "last_change": None if change is None else {
                "from": change.from_model, "to": change.to_model, "reason": change.reason,
                "actor": change.actor, "at": change.created_at.isoformat()},
        }
    for name, figures in by_category(challenger_status(engine, policy)).items():
        if name in out:
            out[name].update(figures)
    for name, rollout in rollout_status(engine, policy)["rollouts"].items():
        if name in out:
            out[name]["rollout"] = rollout
    return out


def rungs(cat: Any, serving: str, state: dict, change: RouteChange | None,
          samples: dict[str, int]) -> dict[str, dict[str, Any]]:
    """Per model of the ladder: comparisons with the reference (the last STATUS_DAYS), agreement,
    CUSUM share, and
    serving / eligible / watching / demoted (the reference: serving or eligible, always)."""
    out = {}
    states = state.get("rungs") or {}
    for model in cat.rungs[:-1]:
        if cat.laddered:
            st = states.get(model) or {}
            shown = rung_state(states, serving, model)
        else:  # two models: the one state is the candidate's
            st = state
            failed = (change is not None and change.from_model == model
                      and change.rule in ("cusum", "flap_guard"))
            shown = ("serving" if serving == model else "eligible" if st.get("eligible")
                     else "demoted" if failed else "watching")
        out[model] = {"samples": samples.get(model, 0), "agreement": st.get("ewma"),
                      "statistic": cat.engine.statistic(st) if st else 0.0, "state": shown,
                      "promotion": cat.engine.promotion(st)}
    out[cat.reference] = {"samples": sum(samples.get(m, 0) for m in cat.rungs[:-1]), "agreement": None,
                          "statistic": 0.0,
                          "state": "serving" if serving == cat.reference else "eligible"}
    return out


def history(engine: Engine, category: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    with session(engine) as s:
        q = select(RouteChange).order_by(RouteChange.id.desc()).limit(limit)  # type: ignore[union-attr]
        if category:
            q = q.where(RouteChange.category == category)
        return [{"id": c.id, "category": c.category, "from": c.from_model, "to": c.to_model,
                 "rule": c.rule, "reason": c.reason, "agreement": c.agreement,
                 "samples": c.samples, "actor": c.actor, "applied": c.applied,
                 "trigger_job_id": c.trigger_job_id, "at": c.created_at.isoformat()}
                for c in s.exec(q)]


def evidence_resets(engine: Engine, category: str | None = None, limit: int = 100,
                    kind: str = "evidence_reset") -> list[dict[str, Any]]:
    """``evidence_reset`` events (or another ``kind``: ``rollout``), newest first: what changed
    under a category's evidence, when."""
    with session(engine) as s:
        q = (select(Event).where(Event.kind == kind)
             .order_by(Event.id.desc()).limit(limit))  # type: ignore[union-attr]
        if category:
            q = q.where(Event.category == category)
        return [{"id": e.id, "category": e.category, "summary": e.summary,
                 "changes": (e.details or {}).get("numbers", {}).get("changes", []),
                 "at": e.created_at.isoformat()} for e in s.exec(q)]


def headroom(engine: Engine, r: Any, models: list[str], scope: str = "") -> dict[str, dict[str, Any]]:
    """Per model: remaining shares of its rate limits as last seen, the pause, deferrals, skips;
    with a separate shadow key (``scope``, its fingerprint), that key's own under ``shadow_key``."""
    from tierguard.contract import keys
    from tierguard.headroom import pauses, ratelimits

    with session(engine) as s:
        skipped = dict(s.execute(
            sa.select(Sample.shadow_model, sa.func.count())
            .where(Sample.error == "skipped", Sample.reason.like("rate_headroom%"))
            .group_by(Sample.shadow_model)).all())
    names = [ratelimits.scoped(m, sc) for m in models for sc in {"", scope}]
    try:
        paused = pauses.paused(r, names)
        deferred = {k.decode(): int(v) for k, v in r.hgetall(keys.DEFERRED).items()}
        views = {n: ratelimits.view(r, n) for n in names}
    except Exception:  # Redis unreachable: what the database knows
        paused, deferred, views = {}, {}, {n: {} for n in names}

    def one(name: str) -> dict[str, Any]:
        view = views.get(name, {})
        until = paused.get(name)
        return {"requests": view.get("requests"), "input_tokens": view.get("input_tokens"),
                "output_tokens": view.get("output_tokens"), "tokens": view.get("tokens"),
                "paused_until": (dt.datetime.fromtimestamp(until, dt.UTC).isoformat()
                                 if until else None)}

    out = {}
    for model in models:
        out[model] = {**one(model), "deferred": deferred.get(model, 0),
                      "skipped_headroom": int(skipped.get(model, 0))}
        if scope:
            out[model]["shadow_key"] = {**one(ratelimits.scoped(model, scope)), "key": scope}
    return out


def retiring_now(policy: Policy, models: list[str]) -> dict[str, Any]:
    """``{"retiring": [{"model", "date", "days_left"}]}`` for those of ``models`` within the policy's
    retirement warning or past their date; nothing when none is."""
    from tierguard.engine.retirements import retiring

    found = retiring(models, policy.retirements, policy.retirement_warning_days, utcnow().date())
    return {"retiring": found} if found else {}
