"""One shadow job end to end (call the other model, compare, record, decide), without Celery."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anthropic
import redis as redis_lib
from sqlalchemy.engine import Engine

from tierguard.calls import Answer, call_model
from tierguard.comparators import Verdict
from tierguard.errors import PermanentCallError, RetryableCallError
from tierguard.job import ShadowJob, digest
from tierguard.policy import Policy
from tierguard.recorder import Outcome, Result, record_many

log = logging.getLogger(__name__)


@dataclass
class Context:
    """What a worker needs to run jobs; built once per worker process.

    ``client`` is one SDK client, or ``client_factory`` makes one per thread
    (a shared connection pool's lock becomes the bottleneck with hundreds of
    threads). ``recorder`` stores results; by default each in its own transaction.
    """

    policy: Policy
    engine: Engine
    client: anthropic.Anthropic | None = None
    redis: redis_lib.Redis | None = None
    client_factory: Callable[[], anthropic.Anthropic] | None = None
    recorder: Callable[[list[Result]], list[Outcome]] | None = None
    runner: Any = None  # a fanout.LoopRunner, for batches
    _local: threading.local = field(default_factory=threading.local)

    def sdk(self) -> anthropic.Anthropic:
        if self.client_factory is None:
            assert self.client is not None
            return self.client
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self.client_factory()
        return client

    def record(self, result: Result) -> Outcome:
        return self.record_all([result])[0]

    def record_all(self, results: list[Result]) -> list[Outcome]:
        if self.recorder is not None:
            return self.recorder(results)
        return record_many(self.engine, self.redis, self.policy, results)


def run_job(ctx: Context, job: ShadowJob, *, attempt: int = 1, final: bool = True) -> Outcome:
    """Run ``job``. A :class:`RetryableCallError` propagates unless ``final``; then it is recorded."""
    answer: Answer | None = None
    error: tuple[str, str] | None = None
    try:
        answer = call_model(ctx.sdk(), job.shadow_model, job.request)
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
        verdict = compare(ctx.policy, job, job.primary_text, answer.text)
        if verdict is None:
            error = ("comparator_error", "the comparator raised; see the worker log")
    outcome = ctx.record(Result(job, answer, verdict, error, attempt))
    if answer is not None and outcome.status != "duplicate" and noise_sampled(ctx.policy, job):
        measure_noise(ctx, job, answer)
    return outcome


def noise_sampled(policy: Policy, job: ShadowJob) -> bool:
    """Deterministic per job, so a redelivered job makes the same choice."""
    rate = policy.category(job.category).noise_floor_rate
    return rate > 0 and int(digest(job.job_id)[:8], 16) / 2**32 < rate


def measure_noise(ctx: Context, job: ShadowJob, answer: Answer) -> None:
    """Ask the reference again and record how well it agrees with itself (never feeds decisions)."""
    cat = ctx.policy.category(job.category)
    first = answer.text if job.shadow_model == cat.reference else job.primary_text
    try:
        second = call_model(ctx.sdk(), cat.reference, job.request)
    except (RetryableCallError, PermanentCallError) as err:
        log.info("noise-floor call for %s failed (%s); skipped", job.job_id, err.kind)
        return
    verdict = compare(ctx.policy, job, first, second.text)
    if verdict is None:
        return
    noise_job = ShadowJob(**{**job.to_dict(), "job_id": job.job_id + ":noise",
                             "served_model": cat.reference, "shadow_model": cat.reference,
                             "primary_text": first})
    ctx.record(Result(noise_job, second, verdict, None, 1, kind="noise"))


def compare(policy: Policy, job: ShadowJob, primary: str, shadow: str) -> Verdict | None:
    try:
        return policy.category(job.category).compare.compare(primary, shadow)
    except Exception:
        log.exception("comparator failed on job %s (%s)", job.job_id, job.category)
        return None
