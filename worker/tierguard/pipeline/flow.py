"""One message of shadow jobs, from its wire form to recorded results: the worker's one flow.

:func:`run` opens the jobs (stored payloads loaded, seals checked; an entry that is not a job is
logged and left out, a job that cannot run is recorded with its reason), keeps Message Batches
jobs for beat's batch cycle, sets aside jobs whose models have no rate-limit room
(:mod:`tierguard.pipeline.yielding`), calls the rest at once (:mod:`tierguard.pipeline.fanout`),
records every result in one transaction and returns what must happen next (:class:`Next`).
The Celery task sends what :class:`Next` lists and decides the message's own retries.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import redis as redis_lib
import sqlalchemy as sa

from tierguard import metrics
from tierguard.contract import job_store, keys
from tierguard.contract.job import ShadowJob
from tierguard.contract.sealing import open_job, seal_job
from tierguard.errors import PayloadInvalid, StoreUnavailable
from tierguard.pipeline import answers, message_batches
from tierguard.pipeline.context import Context
from tierguard.pipeline.fanout import Retry, run_jobs
from tierguard.pipeline.results import Outcome, Result
from tierguard.pipeline.samples import recorded_ids
from tierguard.pipeline.shadow import runnable, skipped
from tierguard.pipeline.yielding import (
    announce_paused,
    caps_spent,
    challenged,
    count_deferred,
    defer_paused,
    deferred_copy,
    held_probes,
    pause_quietly,
    remember_headroom,
)
from tierguard.policy import valid_category

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Again:
    """A job to send again as a message of its own, after ``delay`` seconds; ``retries`` is the
    attempt count it travels with (a transient error spends an attempt, a pause does not)."""

    job: dict[str, Any]
    job_id: str
    delay: float
    retries: int


@dataclass(frozen=True)
class Next:
    """What a message's run leaves to do: jobs to send again, and whether events wait."""

    recorded: int
    again: list[Again]
    retried: int
    deferred: int
    deliver: bool

    def counts(self) -> dict[str, int]:
        return {"recorded": self.recorded, "retried": self.retried, "deferred": self.deferred}


def backoff(attempt: int, retry_after: float | None, cap: float) -> float:
    """Seconds before retry ``attempt`` + 1: the server's retry-after (capped) or jittered 2^n."""
    if retry_after is not None:
        return min(retry_after, cap)
    return min(cap, 0.5 * 2 ** (attempt - 1) * random.uniform(0.8, 1.2))


def run(ctx: Context, raw: list[Any], attempt: int, *, max_attempts: int, retry_cap: float,
        max_countdown: float = 30.0, fresh: bool = False) -> Next:
    """Run one message's jobs. Raises :class:`StoreUnavailable` when the payload store or the
    database cannot be reached (the message runs again later). No job is sent again with a
    countdown over ``max_countdown`` (held past the broker's visibility timeout, it would be
    delivered twice): a longer wait is waited in steps. ``fresh``: the message's first delivery
    from the publisher (no earlier run of it kept answers, so they are not asked for; whether its
    jobs are recorded is still asked: a job the publisher sent twice must not be paid twice)."""
    opened, refused = _opened(ctx, _parsed(raw), attempt)
    opened, paid = _unpaid(ctx, opened, fresh)
    opened, via_batch = _by_batch(ctx, opened, refused, attempt)
    opened, deferred, too_long = defer_paused(ctx, opened, attempt)
    with answers.claimed(ctx.redis, [j.job_id for j in opened], ctx.claim_ttl_s) as busy:
        deferred += [(j, busy[j.job_id]) for j in opened if j.job_id in busy]  # another run calls them
        opened = [j for j in opened if j.job_id not in busy]
        results, retries = _called(ctx, opened, attempt, final=attempt >= max_attempts,
                                   retry_cap=retry_cap)
        answers.keep(ctx.redis, ctx.sealer, results, ctx.answers_ttl_s)
        outcomes = _recorded(ctx, refused + too_long + paid + results, via_batch, busy)
    again, waiting = _again(ctx, retries, deferred, attempt, retry_cap, max_countdown)
    arrived_deferred = {e.get("job_id") for e in raw if isinstance(e, dict) and e.get("deferred_since")}
    count_deferred(ctx, [job for job in waiting  # one wait counted once, not at each of its hops
                         if job.job_id not in busy and job.job_id not in arrived_deferred])
    paused_event = bool(too_long) and announce_paused(ctx, too_long)
    return Next(recorded=sum(o.status != "duplicate" for o in outcomes), again=again,
                retried=len(retries), deferred=len(waiting),
                deliver=paused_event or any(o.events for o in outcomes))


def _parsed(raw: list[Any]) -> list[ShadowJob]:
    """The jobs of a message; one that is not a job at all (no id to record it under) is logged
    and left out, never the end of the others; so is one whose category name is invalid."""
    out = []
    for entry in raw:
        try:
            out.append(ShadowJob.from_dict(entry))
        except (TypeError, ValueError, AttributeError) as err:
            log.error("dropping a message entry that is not a shadow job (%s: %s)", type(err).__name__,
                      str(err)[:200])
    bad = sum(not valid_category(j.category) for j in out)
    if bad:  # a producer that skips the checks
        log.warning("dropping %d job(s) with an invalid category name", bad)
    return [j for j in out if valid_category(j.category)]


def _opened(ctx: Context, jobs: list[ShadowJob], attempt: int) -> tuple[list[ShadowJob], list[Result]]:
    """(jobs ready to call, results of jobs that cannot run: payload expired or seal invalid)."""
    foreign = [j for j in jobs if j.payload_ref not in (None, keys.JOB_PAYLOAD.format(job_id=j.job_id))]
    jobs = [j for j in jobs if j not in foreign]
    try:
        jobs, expired = job_store.load(ctx.redis, jobs)
    except redis_lib.RedisError as err:  # the payloads are there, Redis is not: later, nothing lost
        raise StoreUnavailable(f"stored payloads unreadable ({type(err).__name__})") from None
    refused = [Result(job, None, None, (job_store.EXPIRED, "the job's stored payload expired before "
                                        "a worker ran it (TIERGUARD_JOB_PAYLOAD_TTL_S)"), attempt)
               for job in expired]
    refused += [Result(dataclasses.replace(job, payload_ref=None), None, None,
                       ("payload_invalid", "the job's payload reference is not its own key"), attempt)
                for job in foreign]  # never read or deleted: it could name any key
    opened = []
    for job in jobs:
        try:
            opened.append(runnable(ctx.policy, open_job(job, ctx.sealer)))
        except PayloadInvalid as err:  # recorded as an error, never executed
            log.warning("job %s: %s", job.job_id, err)
            refused.append(Result(job, None, None, ("payload_invalid", str(err)), attempt))
    return opened, refused


def _unpaid(ctx: Context, jobs: list[ShadowJob], fresh: bool = False
            ) -> tuple[list[ShadowJob], list[Result]]:
    """(jobs still to call, results an earlier run of the message paid for). A job already
    recorded (a redelivered message, a replayed job, one sent twice) is left out: it is never
    called again. A ``fresh`` message had no earlier run: no kept answers are looked up."""
    if not jobs:
        return [], []
    done = _stored(lambda: recorded_ids(ctx.engine, [j.job_id for j in jobs]))
    if done:
        log.info("%d job(s) already recorded: not called again", len(done))
        answers.forget(ctx.redis, sorted(done), payloads=_refs([j for j in jobs if j.job_id in done]))
    jobs = [j for j in jobs if j.job_id not in done]
    kept = {} if fresh else answers.kept(ctx.redis, ctx.sealer, jobs)
    if kept:
        metrics.ANSWERS_REUSED.inc(len(kept))
        log.info("%d job(s) recorded from answers already paid for", len(kept))
    return [j for j in jobs if j.job_id not in kept], [r for rs in kept.values() for r in rs]


def _by_batch(ctx: Context, jobs: list[ShadowJob], refused: list[Result], attempt: int
              ) -> tuple[list[ShadowJob], list[ShadowJob]]:
    """(jobs to call now, jobs for a Message Batch); one its model cannot take is skipped now."""
    now, later = [], []
    for job in jobs:
        batch = ctx.policy.category(job.category).shadow_via == "batch" and ctx.platform == "anthropic"
        if not batch or job.headers:
            # a beta request's headers are per request: no Message Batch carries them; Bedrock and
            # Vertex have no Message Batches API: their batch categories are called directly
            now.append(job)
        elif (skip := skipped(ctx.policy, job, attempt)) is not None:
            refused.append(skip)
        else:
            later.append(job)
    if later:
        _stored(lambda: message_batches.enqueue(ctx, later, attempt))
    return now, later


def _called(ctx: Context, jobs: list[ShadowJob], attempt: int, *, final: bool, retry_cap: float
            ) -> tuple[list[Result], list[Retry]]:
    """Every job's calls at once; a probe's 429 pauses its rung for the shadows after it."""
    if not jobs:
        return [], []
    limited: dict[str, float] = {}
    results, retries = ctx.runner.run(run_jobs(ctx.runner, ctx.policy, jobs, attempt=attempt,
                                                final=final, held=held_probes(ctx, jobs),
                                                limited=limited, challenged=challenged(ctx, jobs)))
    for rung, wait in limited.items():
        pause_quietly(ctx, rung, min(wait, retry_cap) or 10.0)
    remember_headroom(ctx, results)
    caps_spent(ctx, results)
    return results, retries


def _recorded(ctx: Context, results: list[Result], via_batch: list[ShadowJob],
              claims: answers.Claims | None = None) -> list[Outcome]:
    """Every result recorded in one transaction; then the payloads and kept answers of finished
    jobs and the run's claims let go, in one command."""
    outcomes = _stored(lambda: ctx.record_all(results)) if results else []
    answers.forget(ctx.redis, [r.job.job_id for r in results if ":" not in r.job.job_id],
                   payloads=_refs([r.job for r in results] + via_batch), claims=claims)
    return outcomes


def _refs(jobs: list[ShadowJob]) -> list[str]:
    """The keys of these jobs' stored payloads."""
    return [job.payload_ref for job in jobs if job.payload_ref]


def _stored(write: Any) -> Any:
    try:
        return write()
    except sa.exc.OperationalError as err:  # the database is down: the message waits for it
        raise StoreUnavailable(f"database unavailable ({type(err.orig).__name__})") from None


def _again(ctx: Context, retries: list[Retry], deferred: list[tuple[ShadowJob, float]], attempt: int,
           retry_cap: float, max_countdown: float) -> tuple[list[Again], list[ShadowJob]]:
    """(jobs sent again, those of them waiting for rate-limit room): a transient error with backoff
    (its own 429 pauses its model and waits without spending an attempt); a deferred job after
    its wait."""
    out, deferred = [], list(deferred)
    for item in retries:
        delay = backoff(attempt, item.error.retry_after, retry_cap)
        if item.error.kind == "rate_limited":  # its own 429: every shadow to that model waits
            until = pause_quietly(ctx, item.job.shadow_model, delay)
            deferred.append((deferred_copy(item.job), max(delay, until - time.time())))
            continue
        log.info("job %s: %s; retry %d in %.1fs", item.job.job_id, item.error.kind, attempt, delay)
        out.append(Again(travelling(ctx, item.job), item.job.job_id, min(delay, max_countdown), attempt))
    for job, wait in deferred:  # a pause spends no attempt; arrivals spread over a tenth of the wait
        spread = min(max(1.0, wait / 10), max_countdown / 10)
        countdown = min(wait, max_countdown - spread) + random.uniform(0, spread)
        out.append(Again(travelling(ctx, job), job.job_id, countdown, attempt - 1))
    return out, [job for job, _ in deferred]


def travelling(ctx: Context, job: ShadowJob) -> dict[str, Any]:
    """A job's wire form when sent again: sealed (or signed) again, and by reference when its
    payload is stored (the stored payload keeps its seal; a signature travels beside the reference)."""
    if job.payload_ref is None:
        return seal_job(job, ctx.sealer).to_dict()
    if ctx.sealer is not None and not ctx.sealer.seals:
        job = seal_job(job, ctx.sealer)
    return job_store.strip(job).to_dict()
