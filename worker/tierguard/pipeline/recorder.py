"""Record one shadow result and act on it, in a single database transaction.

Insert the sample (idempotent on the job id). When it is a conclusive
candidate-vs-reference comparison, lock the category row, expire a pin whose
time is up, feed the detector, and apply its decision (flip, pin, or an
observe-mode "would flip" row). Redis gets the new route after commit.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import redis as redis_lib
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session

from tierguard import metrics, rollups
from tierguard.alerts.events import for_eligible, for_route_change
from tierguard.compare import Verdict
from tierguard.db import Category, RouteChange, Sample, execute_many, session, upsert_insert, utcnow
from tierguard.engine.detector import Decision, Situation
from tierguard.errors import RouteConflict
from tierguard.job import ShadowJob, digest, parse_time
from tierguard.messages import content_text
from tierguard.policy import CategoryPolicy, Policy
from tierguard.routes import change_route, expire_pin, lock_category, publish_quietly

if TYPE_CHECKING:
    from tierguard.pipeline.calls import Answer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    status: Literal["recorded", "duplicate", "error"]
    decision: Decision | None = None
    change: RouteChange | None = None
    events: int = 0


def _excerpt(policy: Policy, text: str | None) -> str | None:
    if text is None or policy.payloads.store != "excerpt":
        return None
    return text[: policy.payloads.excerpt_chars]


def _comparator_name(cat: CategoryPolicy) -> str:
    spec = cat.comparator
    return spec if isinstance(spec, str) else str(spec.get("type"))


def _request_text(request: dict) -> str:
    messages = request.get("messages") or []
    return content_text(messages[-1].get("content", "")) if messages else ""


def sample_values(policy: Policy, job: ShadowJob, answer: Answer | None, verdict: Verdict | None,
                  error: tuple[str, str] | None, attempt: int, kind: str = "shadow",
                  judge: JudgeUsage | None = None) -> dict:
    cat = policy.category(job.category)
    values = dict(
        job_id=job.job_id, category=job.category, kind=kind, served_model=job.served_model,
        shadow_model=job.shadow_model, comparator=_comparator_name(cat), attempts=attempt,
        rung=rung_of(cat, job) if kind in ("shadow", "probe") else None,
        agree=verdict.agree if verdict else None, score=verdict.score if verdict else None,
        reason=verdict.reason if verdict else (error[1] if error else ""),
        detail=verdict.detail if verdict else {},
        error=error[0] if error else None,
        primary_latency_ms=job.primary_latency_ms,
        primary_input_tokens=job.primary_input_tokens,
        primary_output_tokens=job.primary_output_tokens,
        primary_cost_usd=policy.cost_usd(job.served_model, job.primary_input_tokens,
                                         job.primary_output_tokens, job.primary_cache_write_tokens,
                                         job.primary_cache_read_tokens),
        request_hash=digest(job.request), primary_hash=digest(job.primary_text),
        request_excerpt=_excerpt(policy, _request_text(job.request)),
        primary_excerpt=_excerpt(policy, job.primary_text),
        requested_at=parse_time(job.requested_at), created_at=utcnow(),
    )
    if answer is not None:
        values.update(
            shadow_latency_ms=answer.latency_ms, shadow_input_tokens=answer.input_tokens,
            shadow_output_tokens=answer.output_tokens,
            shadow_cost_usd=policy.cost_usd(job.shadow_model, answer.input_tokens,
                                            answer.output_tokens, answer.cache_write_tokens,
                                            answer.cache_read_tokens, answer.batch),
            shadow_via="batch" if answer.batch else None,
            shadow_hash=digest(answer.text), shadow_excerpt=_excerpt(policy, answer.text))
    if judge is not None:
        values.update(judge_model=judge.model, judge_input_tokens=judge.input_tokens,
                      judge_output_tokens=judge.output_tokens,
                      judge_cost_usd=policy.cost_usd(judge.model, judge.input_tokens,
                                                     judge.output_tokens, judge.cache_write_tokens,
                                                     judge.cache_read_tokens))
    return values


def rung_of(cat: CategoryPolicy, job: ShadowJob) -> str | None:
    """The rung a sample compares with the reference (None: not a rung-vs-reference sample)."""
    below = cat.rungs[:-1]
    if job.served_model == cat.reference and job.shadow_model in below:
        return job.shadow_model
    if job.shadow_model == cat.reference and job.served_model in below:
        return job.served_model
    return None


def situation(row: Category, now: float) -> Situation:
    serving = ("candidate" if row.routed_model == row.candidate
               else "reference" if row.routed_model == row.reference else "other")
    return Situation(serving=serving, pinned=row.pinned, now=now)  # type: ignore[arg-type]


def apply_decision(s: Session, row: Category, decision: Decision, trigger_job_id: str | None,
                   target: str | None = None, at: dt.datetime | None = None) -> RouteChange | None:
    """Turn a route-changing decision into a route change (or an observe-mode record); ``target``
    is the rung a ladder's decision moves to (two models: the candidate or the reference)."""
    if not decision.changes_route:
        return None
    target = target or (row.candidate if decision.action == "promote" else row.reference)
    fields = dict(rule=decision.rule, reason=decision.reason, agreement=decision.agreement,
                  samples=decision.samples, numbers=decision.numbers, trigger_job_id=trigger_job_id)
    if not decision.applied:
        change = RouteChange(category=row.name, from_model=row.routed_model, to_model=target,
                             applied=False, created_at=at or utcnow(), **fields)
        s.add(change)
        return change
    try:
        return change_route(s, row, target, pin=True if decision.pin else None, at=at, **fields)
    except RouteConflict:
        log.info("change of %s lost a race; another writer changed it first", row.name)
        return None


@dataclass(frozen=True)
class JudgeUsage:
    """What the judge spent on one sample."""

    model: str
    input_tokens: int
    output_tokens: int
    cache_write_tokens: int = 0
    cache_read_tokens: int = 0


@dataclass(frozen=True)
class Result:
    """One finished shadow job waiting to be recorded."""

    job: ShadowJob
    answer: Answer | None
    verdict: Verdict | None
    error: tuple[str, str] | None
    attempt: int
    kind: str = "shadow"
    judge: JudgeUsage | None = None


def record(engine: Engine, r: redis_lib.Redis | None, policy: Policy, job: ShadowJob,
           answer: Answer | None, verdict: Verdict | None, error: tuple[str, str] | None,
           attempt: int, kind: str = "shadow") -> Outcome:
    return record_many(engine, r, policy, [Result(job, answer, verdict, error, attempt, kind)])[0]


def record_many(engine: Engine, r: redis_lib.Redis | None, policy: Policy,
                results: list[Result]) -> list[Outcome]:
    """Insert every sample and feed the detectors, all in one transaction.

    Categories are locked in name order, so concurrent batches never deadlock;
    within a category, samples are fed in the order given.
    """
    outcomes: list[Outcome | None] = [None] * len(results)
    touched: dict[str, tuple[str, tuple[str, str], float]] = {}
    changed: dict[str, Category] = {}
    changes: list[RouteChange] = []
    with session(engine) as s:
        rows = [sample_values(policy, x.job, x.answer, x.verdict, x.error, x.attempt, x.kind, x.judge)
                for x in results]
        inserted = insert_samples(s, rows)
        fresh: dict[str, dict] = {}
        for row in rows:  # each inserted job once (a batch may hold a job twice)
            if row["job_id"] in inserted:
                fresh.setdefault(row["job_id"], row)
        rollups.add(s, list(fresh.values()))
        by_category: dict[str, list[int]] = {}
        seen: set[str] = set()
        for i, x in enumerate(results):
            if x.job.job_id not in inserted or x.job.job_id in seen:
                outcomes[i] = Outcome("duplicate")
                continue
            seen.add(x.job.job_id)
            if x.verdict is None:
                outcomes[i] = Outcome("error")
            elif x.kind not in ("shadow", "probe"):
                outcomes[i] = Outcome("recorded")
            else:
                by_category.setdefault(x.job.category, []).append(i)
        now = utcnow()
        for name in sorted(by_category):
            cat = policy.category(name)
            row = lock_category(s, cat)
            expired = expire_pin(s, row, now)
            expired_events = 0
            if expired is not None:
                changes.append(expired)
                changed[name] = row
                expired_events = int(for_route_change(s, policy, expired, "pin_expired") is not None)
            pair = {row.candidate, row.reference}
            state = dict(row.detector_state or {})
            if not cat.laddered and "rungs" in state:  # a ladder before: its candidate's own evidence
                state = dict(state["rungs"].get(cat.candidate) or {})
            if cat.engine.stale(state):
                log.warning("category %s: detector settings changed (policy); its evidence restarts",
                            name)
            sit = situation(row, now.timestamp())
            for n, i in enumerate(by_category[name]):
                x = results[i]
                # The category's first sample of the batch carries the pin expiry, if any.
                change, events, decision = (expired, expired_events, None) if n == 0 else (None, 0, None)
                target = None
                agree = x.verdict.agree  # type: ignore[union-attr]
                if cat.laddered:
                    rung = rung_of(cat, x.job)
                    if rung is not None:
                        state, move = cat.ladder_engine.feed(state, row.routed_model, rung, agree,
                                                             row.pinned, now.timestamp())
                        decision, target = move.decision, move.target
                elif {x.job.served_model, x.job.shadow_model} == pair:
                    state, decision = cat.engine.update(state, agree, sit)
                if decision is not None:
                    if decision.changes_route:
                        if cat.laddered:
                            state = cat.ladder_engine.mirror(state, target or row.routed_model)
                        row.detector_state = state  # the change writes the state with the route
                        change = apply_decision(s, row, decision, x.job.job_id, target)
                        if change is not None:
                            changes.append(change)
                            if change.applied:
                                changed[name] = row
                                sit = situation(row, now.timestamp())
                                events += for_route_change(s, policy, change,
                                                           event_kind(decision)) is not None
                    elif decision.action == "eligible":
                        events += for_eligible(s, policy, cat.name, decision.reason, x.job.job_id,
                                               decision.numbers) is not None
                outcomes[i] = Outcome("recorded", decision, change, events)
            row.detector_state = (cat.ladder_engine.mirror(state, row.routed_model) if cat.laddered
                                  else state)
            s.add(row)
            touched[name] = (row.routed_model, (row.candidate, row.reference),
                             cat.engine.statistic(row.detector_state))
        s.commit()
    _observe(results, outcomes, changes, touched)
    for change in changes:
        log.warning("category %s: %s %s -> %s: %s", change.category,
                    "changed" if change.applied else "would change", change.from_model,
                    change.to_model, change.reason)
    if changed:
        publish_quietly(r, list(changed.values()))
    return outcomes  # type: ignore[return-value]


@metrics.safely
def _observe(results: list[Result], outcomes: list[Outcome | None], changes: list[RouteChange],
             touched: dict[str, tuple[str, tuple[str, str], float]]) -> None:
    for x, o in zip(results, outcomes, strict=True):
        if o is None or o.status == "duplicate" or x.kind != "shadow":
            continue
        outcome = ((x.error[0] if x.error[0] == "skipped" else "error") if x.error
                   else "agree" if x.verdict and x.verdict.agree else "disagree")
        metrics.RESULTS.labels(x.job.category, outcome).inc()
    for change in changes:
        if change.applied and change.from_model != change.to_model:
            metrics.ROUTE_CHANGES.labels(change.category, change.rule, change.to_model).inc()
            if change.rule in ("cusum", "flap_guard"):
                metrics.DEMOTED_AT.labels(change.category, change.to_model).set(
                    change.created_at.timestamp())
    for name, (model, pair, statistic) in touched.items():
        metrics.route(name, model, pair)
        metrics.STATISTIC.labels(name).set(statistic)


def insert_samples(s: Session, rows: list[dict]) -> set[str]:
    """Insert sample rows, skipping job ids already recorded; returns the ids inserted."""
    if not rows:
        return set()
    insert = upsert_insert(s)
    table = Sample.__table__
    unstamped = [row for row in rows if row.get("requested_at") is None]
    if unstamped:
        # requested_at is part of the key on PostgreSQL: a job without one gets its
        # created_at, which differs per delivery, so look for an earlier delivery first.
        ids = [row["job_id"] for row in unstamped]
        seen = set(s.execute(sa.select(table.c.job_id).where(table.c.job_id.in_(ids))).scalars())
        rows = [row for row in rows if row["job_id"] not in seen]
        stamp: dict[str, Any] = {}
        for row in unstamped:  # every copy of a job in this batch: one stamp, one key
            row["requested_at"] = stamp.setdefault(row["job_id"], row["created_at"])
        if not rows:
            return set()
    keys = sorted(set().union(*rows))
    rows = [{k: row.get(k) for k in keys} for row in rows]
    stmt = insert(table).on_conflict_do_nothing().returning(table.c.job_id)
    return set(execute_many(s, "insert_samples", stmt, rows, returning=True))


def event_kind(decision: Decision) -> str:
    if decision.pin:
        return "flap_guard"
    return "promoted" if decision.action == "promote" else "demoted"
