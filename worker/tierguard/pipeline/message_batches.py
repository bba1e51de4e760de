"""Batch shadows: a category's jobs collected and sent through the Message Batches API.

::

    worker   shadow_via: batch ──▶ batch_job (waiting)                        enqueue()
    beat, every batch_poll_seconds ──▶ cycle():
      submit   batch_max_jobs waiting, or the oldest waited batch_max_wait_minutes
               ──▶ shadow_batch (submitting) ──▶ creating ── messages.batches.create
               ──▶ in_progress
      find     a creating batch whose create's answer was lost: found among the API's
               batches ──▶ in_progress, or not there in time ──▶ submitting (batch_creates)
      collect  an ended batch's results, streamed, compared and recorded as sync results
               are (record_many: once per job id); errored, expired and canceled requests
               wait again until shadow_max_attempts, then are recorded as errors

Each arrow is one transaction; a process killed between two repeats its step, and the
sample's job id keeps every job recorded once. A create is never sent twice blindly: killed
(or cut off, or the database down) after the API took a batch and before its id was stored,
the batch is found at the API and adopted (what is left: :mod:`batch_creates`). Noise-floor
twins are not sent by batch; a judge is asked synchronously.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import anthropic
import httpx2

from tierguard.contract.job import ShadowJob, digest
from tierguard.contract.messages import cache_tokens_of, message_text, snapshot_of, usage_of
from tierguard.contract.sealing import open_job, seal_job
from tierguard.errors import PayloadInvalid, RetryableCallError, ShadowCallError
from tierguard.pipeline import batch_creates
from tierguard.pipeline.calls import Answer, classify
from tierguard.pipeline.context import Context
from tierguard.pipeline.judging import JudgeCall, needs_judge
from tierguard.pipeline.results import Outcome, Result
from tierguard.pipeline.shadow import result_of, runnable
from tierguard.store import batch_jobs
from tierguard.store.db import utcnow
from tierguard.store.tables import BatchJob, ShadowBatch

log = logging.getLogger(__name__)
CHUNK = 500  # results recorded per transaction
_CUSTOM_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
PERMANENT_ERRORS = {"invalid_request_error", "authentication_error", "permission_error",
                    "not_found_error", "request_too_large"}


def custom_id(job_id: str) -> str:
    """The job id, or a digest of it where the API's custom_id rules would refuse it."""
    return job_id if _CUSTOM_ID.match(job_id) else "tg-" + digest(job_id)[:48]


def params(job: ShadowJob) -> dict[str, Any]:
    """The Messages API body of a job's request (an SDK call's ``extra_body`` merged, as the SDK
    would send it)."""
    request = job.request
    extra = request.get("extra_body")
    return {**{k: v for k, v in request.items() if k not in ("model", "stream", "extra_body")},
            **(extra if isinstance(extra, dict) else {}), "model": job.shadow_model}


def enqueue(ctx: Context, jobs: list[ShadowJob], attempt: int = 1) -> int:
    """Keep ``jobs`` (opened) for a batch, sealed again when the worker has keys."""
    return batch_jobs.enqueue(ctx.engine, [seal_job(j, ctx.sealer).to_dict() for j in jobs], attempt)


def cycle(ctx: Context, client: anthropic.Anthropic, max_attempts: int,
          now: dt.datetime | None = None, owned: Callable[[], bool] = lambda: True,
          unseen_after: float = 90.0) -> tuple[Counter[str], list[Outcome]]:
    """Look for the batches whose create's answer was lost, send the batches that are due, then
    collect every ended one. ``owned`` says whether this worker still holds the cycle's lock: no
    batch is created once it does not (two workers creating the same batch would pay for it
    twice); ``unseen_after``: see :mod:`~tierguard.pipeline.batch_creates`."""
    now = now or utcnow()
    counts: Counter[str] = Counter()
    outcomes: list[Outcome] = []
    for name, (n, oldest) in batch_jobs.waiting(ctx.engine).items():
        cat = ctx.policy.category(name)
        aged = now - oldest >= dt.timedelta(minutes=cat.batch_max_wait_minutes)
        for _ in range(math.ceil(n / cat.batch_max_jobs) if aged else n // cat.batch_max_jobs):
            if batch_jobs.claim(ctx.engine, name, cat.batch_max_jobs) is None:
                break
    outcomes += _send(ctx, client, counts, owned, now, unseen_after)
    for batch in batch_jobs.batches(ctx.engine, "in_progress"):
        outcomes += _each(collect, ctx, client, batch, counts, max_attempts)
    return counts, outcomes


def _send(ctx: Context, client: Any, counts: Counter[str], owned: Callable[[], bool],
          now: dt.datetime, unseen_after: float) -> list[Outcome]:
    """The lost creates looked for, then the claimed batches sent, while the lock is this worker's."""
    outcomes: list[Outcome] = []
    for status, step, args in (("creating", batch_creates.reconcile, (now, unseen_after)),
                               ("submitting", submit, ())):
        for batch in batch_jobs.batches(ctx.engine, status):
            if not owned():
                log.warning("the Message Batches lock is no longer this worker's: no batch is sent")
                counts["lock_lost"] += 1
                return outcomes
            outcomes += _each(step, ctx, client, batch, counts, *args)
    return outcomes


def _each(step: Any, ctx: Context, client: Any, batch: Any, counts: Counter[str], *args: Any
          ) -> list[Outcome]:
    """One batch's step; a model API failure there (a dropped results stream) leaves it for the
    next cycle without holding the other batches back. A database outage stops the cycle."""
    try:
        return step(ctx, client, batch, counts, *args)
    except (anthropic.AnthropicError, httpx2.HTTPError) as err:
        log.warning("batch %s (%s): %s; again on the next cycle", batch.id, batch.category, err)
        counts["step_failed"] += 1
        return []


def _opened(ctx: Context, rows: list[BatchJob]
            ) -> tuple[list[tuple[BatchJob, ShadowJob]], list[Result]]:
    ok, refused = [], []
    for row in rows:
        job = ShadowJob.from_dict(row.payload)
        try:
            ok.append((row, runnable(ctx.policy, open_job(job, ctx.sealer))))
        except PayloadInvalid as err:
            refused.append(Result(job, None, None, ("payload_invalid", str(err)), row.attempt))
    return ok, refused


def submit(ctx: Context, client: anthropic.Anthropic, batch: ShadowBatch,
           counts: Counter[str]) -> list[Outcome]:
    rows = batch_jobs.jobs_of(ctx.engine, batch.id)
    jobs, refused = _opened(ctx, rows)
    outcomes = _record(ctx, batch.id, refused)
    if not jobs:
        batch_jobs.settle(ctx.engine, batch.id, [], [], status="recorded")
        return outcomes
    requests = [{"custom_id": custom_id(job.job_id), "params": params(job)} for _, job in jobs]
    if batch_creates.blocked(ctx, len(requests)):  # a lost create of as many is unresolved
        counts["waits_for_lost_create"] += 1
        return outcomes
    if not batch_jobs.creating(ctx.engine, batch.id, len(requests)):
        return outcomes  # (no longer submitting: another cycle took it)
    try:
        created = client.messages.batches.create(requests=requests)  # type: ignore[arg-type]
    except anthropic.AnthropicError as err:
        error = classify(err)
        if not batch_creates.refused(error):
            batch_creates.unanswered(ctx, batch, error, counts)  # the API may have taken it
        elif batch_jobs.reopen(ctx.engine, batch.id):  # answered: not taken
            outcomes += _not_taken(ctx, batch, jobs, error, counts)
        return outcomes
    if not batch_jobs.submitted(ctx.engine, batch.id, created.id):  # another worker took it over
        if batch_jobs.api_id_of(ctx.engine, batch.id) != created.id:  # (not found there: sent again)
            log.error("batch %s (%s): sent as %s after another worker had taken it over; that "
                      "batch's answers are not read", batch.id, batch.category, created.id)
            counts["create_orphaned"] += 1
        return outcomes
    log.info("batch %s (%s): %d jobs sent as %s", batch.id, batch.category, len(jobs), created.id)
    counts["submitted"] += 1
    return outcomes


def _not_taken(ctx: Context, batch: ShadowBatch, jobs: list[tuple[BatchJob, ShadowJob]],
               error: ShadowCallError, counts: Counter[str]) -> list[Outcome]:
    """A create the API answered with an error: sent again later, split, or its jobs refused."""
    if isinstance(error, RetryableCallError):  # sent again on the next cycle
        log.warning("batch %s (%s, %d jobs) not sent yet: %s", batch.id, batch.category,
                    len(jobs), error)
        counts["submit_retry"] += 1
        return []
    if error.status in (400, 413) and batch_jobs.split(ctx.engine, batch.id):
        # Too large, or one request the API will not take: halves, until it is one job.
        log.warning("batch %s (%s, %d jobs) refused (%s): split in two", batch.id, batch.category,
                    len(jobs), error)
        counts["split"] += 1
        return []
    log.error("batch %s (%s, %d jobs) refused: %s", batch.id, batch.category, len(jobs), error)
    results = [Result(job, None, None, ("batch_refused", str(error)), row.attempt)
               for row, job in jobs]
    counts["refused"] += 1
    return _record(ctx, batch.id, results, status="refused", error=str(error))


def _failure(result: Any) -> tuple[str, str, bool]:
    """(error kind, reason, retryable) of a request the batch did not answer."""
    if result.type == "errored":
        inner = getattr(getattr(result, "error", None), "error", None)
        kind = getattr(inner, "type", "api_error")
        return "batch_errored", f"{kind}: {getattr(inner, 'message', '')}", kind not in PERMANENT_ERRORS
    return f"batch_{result.type}", f"the batch request was {result.type}", True


def collect(ctx: Context, client: anthropic.Anthropic, batch: ShadowBatch,
            counts: Counter[str], max_attempts: int) -> list[Outcome]:
    """Record an ended batch's results (in chunks); requests that failed transiently wait again."""
    assert batch.api_id is not None
    try:
        api = client.messages.batches.retrieve(batch.api_id)
    except anthropic.AnthropicError as err:
        _unreachable(ctx, batch, classify(err), counts, max_attempts)
        return []
    if api.processing_status != "ended":
        return []
    rows = {custom_id(row.job_id): row for row in batch_jobs.jobs_of(ctx.engine, batch.id)}
    outcomes: list[Outcome] = []
    pending: list[Result] = []
    judged: list[tuple[ShadowJob, Answer, int]] = []
    retry: list[str] = []
    for item in client.messages.batches.results(batch.api_id):
        row = rows.pop(item.custom_id, None)
        if row is None:  # recorded by an earlier, interrupted collection
            continue
        _sort(ctx, row, item.result, pending, judged, retry, counts, max_attempts)
        if len(pending) >= CHUNK:
            outcomes += _record(ctx, batch.id, pending)
            pending = []
    pending += _judge(ctx, judged)
    missing = list(rows.values())  # not in the results: sent again, up to the attempts
    retry += [r.job_id for r in missing if r.attempt < max_attempts]
    pending += _give_up(ctx, [r for r in missing if r.attempt >= max_attempts], "batch_missing",
                        "the batch's results did not include it")
    outcomes += _record(ctx, batch.id, pending, retry, status="recorded",
                        counts=api.request_counts.model_dump())
    counts["recorded"] += sum(o.status != "duplicate" for o in outcomes)
    counts["retried"] += len(retry)
    counts["collected"] += 1
    log.info("batch %s (%s) ended: %s", batch.id, batch.api_id, api.request_counts.model_dump())
    return outcomes


def _unreachable(ctx: Context, batch: ShadowBatch, error: Exception, counts: Counter[str],
                 max_attempts: int) -> None:
    """A batch the API would not show: lost when it no longer knows it (its jobs wait again, up to
    their attempts), else looked at again next cycle."""
    if getattr(error, "status", None) != 404:
        log.warning("batch %s (%s): cannot look at it yet: %s", batch.id, batch.api_id, error)
        return
    log.error("batch %s (%s) is unknown to the API; its jobs wait again", batch.id, batch.api_id)
    rows = batch_jobs.jobs_of(ctx.engine, batch.id)
    given_up = _give_up(ctx, [r for r in rows if r.attempt >= max_attempts], "batch_lost",
                        f"the API no longer knows batch {batch.api_id}")
    _record(ctx, batch.id, given_up, [r.job_id for r in rows if r.attempt < max_attempts],
            status="lost", error=str(error))
    counts["lost"] += 1


def _sort(ctx: Context, row: BatchJob, result: Any, pending: list[Result],
          judged: list[tuple[ShadowJob, Answer, int]], retry: list[str], counts: Counter[str],
          max_attempts: int) -> None:
    """One request's result: to record now, to judge, or to send again."""
    opened, refused = _opened(ctx, [row])
    if refused:
        pending += refused
        return
    job = opened[0][1]
    if result.type == "succeeded":
        message = result.message
        answer = Answer(message_text(message), *usage_of(message), None, *cache_tokens_of(message),
                        batch=True, snapshot=snapshot_of(message),
                        stop_reason=getattr(message, "stop_reason", None))
        if needs_judge(ctx.policy.category(job.category)):
            judged.append((job, answer, row.attempt))
        else:
            pending.append(result_of(ctx.policy, job, answer, None, row.attempt))
        return
    kind, why, retryable = _failure(result)
    counts[kind] += 1
    if retryable and row.attempt < max_attempts:
        retry.append(row.job_id)
    else:
        pending.append(Result(job, None, None, (kind, f"{why} (attempt {row.attempt})"), row.attempt))


def _give_up(ctx: Context, rows: list[BatchJob], kind: str, why: str) -> list[Result]:
    opened, refused = _opened(ctx, rows)
    return refused + [Result(job, None, None, (kind, f"{why} (attempt {row.attempt})"), row.attempt)
                      for row, job in opened]


JUDGES_IN_FLIGHT = 16  # a batch's judge calls go a few at a time, not as one burst


def _judge(ctx: Context, judged: list[tuple[ShadowJob, Answer, int]]) -> list[Result]:
    if not judged:
        return []
    judge = JudgeCall(lambda: ctx.runner.client)

    async def all_of() -> list[Result]:
        gate = asyncio.Semaphore(JUDGES_IN_FLIGHT)

        async def one(job: ShadowJob, answer: Answer, attempt: int) -> Result:
            async with gate:
                return await judge.result(ctx.policy, job, answer, attempt)

        return list(await asyncio.gather(*(one(*j) for j in judged)))

    return ctx.runner.run(all_of())


def _record(ctx: Context, batch_id: str, results: list[Result], retry: list[str] | None = None,
            **close: Any) -> list[Outcome]:
    """Record ``results`` (once per job id), then let their jobs leave the batch."""
    outcomes = ctx.record_all(results) if results else []
    if results or retry or close:
        batch_jobs.settle(ctx.engine, batch_id, [r.job.job_id for r in results], retry or [], **close)
    return outcomes
