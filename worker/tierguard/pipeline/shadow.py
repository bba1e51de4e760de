"""One shadow job end to end (call the other model, compare, record, decide), without Celery."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anthropic
import redis as redis_lib
from sqlalchemy.engine import Engine

from tierguard.compare import Verdict
from tierguard.errors import PermanentCallError, RetryableCallError
from tierguard.job import ShadowJob, digest
from tierguard.limits import too_big
from tierguard.pipeline.calls import Answer, call_model
from tierguard.pipeline.recorder import Outcome, Result, record_many
from tierguard.policy import Policy

log = logging.getLogger(__name__)


@dataclass
class Context:
    """What running jobs needs; a worker builds one per process.

    ``client`` is the synchronous SDK client :func:`run_job` uses; the worker's
    batches go through ``runner`` (a :class:`tierguard.pipeline.fanout.LoopRunner`).
    ``recorder`` stores results; by default in one transaction per call.
    """

    policy: Policy
    engine: Engine
    client: anthropic.Anthropic | None = None
    redis: redis_lib.Redis | None = None
    recorder: Callable[[list[Result]], list[Outcome]] | None = None
    runner: Any = None
    sealer: Any = None  # a tierguard.sealing.Sealer when TIERGUARD_PAYLOAD_KEYS is set
    batch_client: Any = None  # the anthropic.Anthropic client batch shadows use, made lazily
    scope: str = ""  # TIERGUARD_SHADOW_API_KEY's fingerprint: its own pauses and headroom
    caps: Any = None  # a tierguard.shadow_caps.ShadowCaps (policy shadow_limits)

    def record_all(self, results: list[Result]) -> list[Outcome]:
        if self.recorder is not None:
            return self.recorder(results)
        return record_many(self.engine, self.redis, self.policy, results)


def result_of(policy: Policy, job: ShadowJob, answer: Answer | None, error: Exception | None,
              attempt: int) -> Result:
    """The recordable result of one call: compared, or an error (never a disagreement)."""
    if answer is None:
        if isinstance(error, RetryableCallError):
            return Result(job, None, None, (error.kind, f"gave up after {attempt} attempts: {error}"),
                          attempt)
        assert isinstance(error, PermanentCallError)
        return Result(job, None, None, (error.kind, str(error)), attempt)
    verdict = compare(policy, job, job.primary_text, answer.text)
    failed = None if verdict else ("comparator_error", "the comparator raised; see the worker log")
    return Result(job, answer, verdict, failed, attempt)


SKIPPED = "skipped"


def skipped(policy: Policy, job: ShadowJob, attempt: int) -> Result | None:
    """A job whose request the shadow model cannot take: recorded as skipped, never sent."""
    why = too_big(policy.limits_for(job.shadow_model), job.request)
    if why is None:
        return None
    return Result(job, None, None, (SKIPPED, f"limits: {job.shadow_model}: {why}"), attempt)


def noise_sampled(policy: Policy, job: ShadowJob) -> bool:
    """Deterministic per job, so a redelivered job makes the same choice."""
    rate = policy.category(job.category).noise_floor_rate
    return rate > 0 and int(digest(job.job_id)[:8], 16) / 2**32 < rate


def probe_rung(policy: Policy, job: ShadowJob) -> str | None:
    """The rung a sampled job of a ladder also asks (``probe_rate`` of them), or None. Chosen by
    the job id (evenly spread over the rungs neither serving nor shadowed, the same on every
    delivery); never one whose limits the request exceeds."""
    cat = policy.category(job.category)
    if not cat.laddered or cat.probe_rate <= 0:
        return None
    h = digest(job.job_id + ":probe")
    if int(h[:8], 16) / 2**32 >= cat.probe_rate:
        return None
    choices = [r for r in cat.rungs[:-1] if r not in (job.served_model, job.shadow_model)]
    if not choices:
        return None
    rung = choices[int(h[8:16], 16) % len(choices)]
    return None if too_big(policy.limits_for(rung), job.request) else rung


def probe_job(policy: Policy, job: ShadowJob, rung: str, shadow_text: str) -> ShadowJob:
    """The probe's own job: ``rung`` against the job's reference answer, recorded as its own sample."""
    cat = policy.category(job.category)
    reference_text = shadow_text if job.shadow_model == cat.reference else job.primary_text
    return ShadowJob(**{**job.to_dict(), "job_id": f"{job.job_id}:probe", "served_model": cat.reference,
                        "shadow_model": rung, "primary_text": reference_text})


def noise_result(policy: Policy, job: ShadowJob, shadow_text: str, second: Answer) -> Result | None:
    """The reference's second answer against its first: self-agreement, never a decision."""
    cat = policy.category(job.category)
    first = shadow_text if job.shadow_model == cat.reference else job.primary_text
    verdict = compare(policy, job, first, second.text)
    if verdict is None:
        return None
    twin = ShadowJob(**{**job.to_dict(), "job_id": job.job_id + ":noise",
                        "served_model": cat.reference, "shadow_model": cat.reference,
                        "primary_text": first})
    return Result(twin, second, verdict, None, 1, kind="noise")


def run_job(ctx: Context, job: ShadowJob, *, attempt: int = 1, final: bool = True) -> Outcome:
    """Run ``job`` synchronously. A :class:`RetryableCallError` propagates unless ``final``."""
    assert ctx.client is not None
    skip = skipped(ctx.policy, job, attempt)
    if skip is not None:
        return ctx.record_all([skip])[0]
    answer = error = None
    try:
        answer = call_model(ctx.client, job.shadow_model, job.request, job.headers)
    except RetryableCallError as err:
        if not final:
            raise
        error = err
    except PermanentCallError as err:
        error = err
    results = [result_of(ctx.policy, job, answer, error, attempt)]
    if answer is not None and results[0].verdict is not None and noise_sampled(ctx.policy, job):
        try:
            second = call_model(ctx.client, ctx.policy.category(job.category).reference, job.request,
                                job.headers)
            twin = noise_result(ctx.policy, job, answer.text, second)
            results += [twin] if twin else []
        except (RetryableCallError, PermanentCallError) as err:
            log.info("noise-floor call for %s failed (%s); skipped", job.job_id, err.kind)
    return ctx.record_all(results)[0]


def compare(policy: Policy, job: ShadowJob, primary: str, shadow: str) -> Verdict | None:
    try:
        return policy.category(job.category).compare.compare(primary, shadow)
    except Exception:
        log.exception("comparator failed on job %s (%s)", job.job_id, job.category)
        return None
