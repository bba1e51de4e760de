"""Record one shadow result and act on it, in a single database transaction.

Insert the sample (idempotent on the job id); when it is a conclusive
candidate-vs-reference comparison, feed the category's detector under a row
lock and, if it says demote, flip the route. Redis gets the new route after
commit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import redis as redis_lib
from sqlalchemy.engine import Engine

from tierguard.calls import content_text
from tierguard.comparators import Verdict
from tierguard.db import Category, RouteChange, Sample, insert_ignore, session, utcnow
from tierguard.detector import Decision, WindowRule
from tierguard.errors import RouteConflict
from tierguard.job import ShadowJob, digest, parse_time
from tierguard.policy import CategoryPolicy, Policy
from tierguard.routes import change_route, lock_category, publish_quietly

if TYPE_CHECKING:
    from tierguard.calls import Answer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    status: Literal["recorded", "duplicate", "error"]
    decision: Decision | None = None
    change: RouteChange | None = None


def rule_for(cat: CategoryPolicy) -> WindowRule:
    return WindowRule(threshold=cat.threshold, min_samples=cat.min_samples, window=cat.window)


def _excerpt(policy: Policy, text: str | None) -> str | None:
    if text is None or policy.payloads.store != "excerpt":
        return None
    return text[: policy.payloads.excerpt_chars]


def sample_values(policy: Policy, job: ShadowJob, answer: Answer | None, verdict: Verdict | None,
                  error: tuple[str, str] | None, attempt: int) -> dict:
    cat = policy.category(job.category)
    request_text = digest(job.request)
    values = dict(
        job_id=job.job_id, category=job.category, served_model=job.served_model,
        shadow_model=job.shadow_model, comparator=_comparator_name(cat), attempts=attempt,
        agree=verdict.agree if verdict else None, score=verdict.score if verdict else None,
        reason=verdict.reason if verdict else (error[1] if error else ""),
        detail=verdict.detail if verdict else {},
        error=error[0] if error else None,
        primary_latency_ms=job.primary_latency_ms,
        primary_input_tokens=job.primary_input_tokens,
        primary_output_tokens=job.primary_output_tokens,
        primary_cost_usd=policy.cost_usd(job.served_model, job.primary_input_tokens,
                                         job.primary_output_tokens),
        request_hash=request_text, primary_hash=digest(job.primary_text),
        request_excerpt=_excerpt(policy, _request_text(job.request)),
        primary_excerpt=_excerpt(policy, job.primary_text),
        requested_at=parse_time(job.requested_at), created_at=utcnow(),
    )
    if answer is not None:
        values.update(
            shadow_latency_ms=answer.latency_ms, shadow_input_tokens=answer.input_tokens,
            shadow_output_tokens=answer.output_tokens,
            shadow_cost_usd=policy.cost_usd(job.shadow_model, answer.input_tokens,
                                            answer.output_tokens),
            shadow_hash=digest(answer.text), shadow_excerpt=_excerpt(policy, answer.text))
    return values


def _comparator_name(cat: CategoryPolicy) -> str:
    spec = cat.comparator
    return spec if isinstance(spec, str) else str(spec.get("type"))


def _request_text(request: dict) -> str:
    messages = request.get("messages") or []
    return content_text(messages[-1].get("content", "")) if messages else ""


def record(engine: Engine, r: redis_lib.Redis | None, policy: Policy, job: ShadowJob,
           answer: Answer | None, verdict: Verdict | None, error: tuple[str, str] | None,
           attempt: int) -> Outcome:
    cat = policy.category(job.category)
    values = sample_values(policy, job, answer, verdict, error, attempt)
    with session(engine) as s:
        if insert_ignore(s, Sample.__table__, values) == 0:
            s.rollback()
            return Outcome("duplicate")
        if verdict is None:
            s.commit()
            return Outcome("error")
        row = lock_category(s, cat)
        pair = {job.served_model, job.shadow_model}
        if pair != {row.candidate, row.reference}:
            s.commit()  # a pin to a third model: recorded, but not evidence about the pair
            return Outcome("recorded")
        decision, change = evaluate(s, row, cat, verdict.agree, job)
        s.commit()
    if change is not None:
        log.warning("category %s flipped %s -> %s: %s", change.category, change.from_model,
                    change.to_model, change.reason)
        publish_quietly(r, [row])
    return Outcome("recorded", decision, change)


def evaluate(s, row: Category, cat: CategoryPolicy, agree: bool,
             job: ShadowJob) -> tuple[Decision, RouteChange | None]:
    rule = rule_for(cat)
    can_demote = row.routed_model == row.candidate and not row.pinned
    state, decision = rule.update(dict(row.detector_state or {}), agree, can_demote=can_demote)
    row.detector_state = state
    change = None
    if decision.action == "demote":
        try:
            change = change_route(s, row, row.reference, rule=decision.rule, reason=decision.reason,
                                  agreement=decision.agreement, samples=decision.samples,
                                  numbers=decision.numbers, trigger_job_id=job.job_id)
        except RouteConflict:
            log.info("flip of %s lost a race; another worker changed it", row.name)
    else:
        s.add(row)
    return decision, change
