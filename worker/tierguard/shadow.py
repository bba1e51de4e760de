"""One shadow job end to end (call the other model, compare, record, decide), without Celery."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import anthropic
import redis as redis_lib
from sqlalchemy.engine import Engine

from tierguard.calls import Answer, call_model
from tierguard.comparators import Verdict
from tierguard.errors import PermanentCallError, RetryableCallError
from tierguard.job import ShadowJob
from tierguard.policy import Policy
from tierguard.recorder import Outcome, record

log = logging.getLogger(__name__)


@dataclass
class Context:
    """What a worker needs to run jobs; built once per worker process."""

    policy: Policy
    engine: Engine
    client: anthropic.Anthropic
    redis: redis_lib.Redis | None = None


def run_job(ctx: Context, job: ShadowJob, *, attempt: int = 1, final: bool = True) -> Outcome:
    """Run ``job``. A :class:`RetryableCallError` propagates unless ``final``; then it is recorded."""
    answer: Answer | None = None
    error: tuple[str, str] | None = None
    try:
        answer = call_model(ctx.client, job.shadow_model, job.request)
    except RetryableCallError as err:
        if not final:
            raise
        error = (err.kind, f"gave up after {attempt} attempts: {err}")
    except PermanentCallError as err:
        error = (err.kind, str(err))
    if answer is None:
        assert error is not None
        verdict = None
    else:
        verdict = compare(ctx.policy, job, answer.text)
        if verdict is None:
            error = ("comparator_error", "the comparator raised; see the worker log")
    return record(ctx.engine, ctx.redis, ctx.policy, job, answer, verdict, error, attempt)


def compare(policy: Policy, job: ShadowJob, shadow_text: str) -> Verdict | None:
    try:
        return policy.category(job.category).compare.compare(job.primary_text, shadow_text)
    except Exception:
        log.exception("comparator failed on job %s (%s)", job.job_id, job.category)
        return None
