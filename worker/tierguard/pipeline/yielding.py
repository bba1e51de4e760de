"""Shadows yield to production's rate limits: the worker's side of :mod:`tierguard.pauses`.

Before a batch is called, jobs whose model is paused (a 429) or short of headroom
(the API's rate-limit headers, :mod:`tierguard.ratelimits`) are set aside to be
re-queued for later without spending an attempt; one held past
``shadow_headroom.max_defer_minutes`` becomes a skipped sample and, once per model
and hour, a ``shadows_paused`` event. After the calls, the latest headers per model
are kept for every worker to read.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time

import redis as redis_lib
import sqlalchemy as sa

from tierguard import keys, metrics, pauses, ratelimits
from tierguard.alerts.events import for_shadows_paused
from tierguard.db import session
from tierguard.job import ShadowJob, parse_time
from tierguard.pipeline.recorder import Result
from tierguard.pipeline.shadow import SKIPPED, Context

log = logging.getLogger(__name__)


def deferred_copy(job: ShadowJob) -> ShadowJob:
    """``job`` marked with when it was first deferred (kept on later deferrals)."""
    if job.deferred_since:
        return job
    return dataclasses.replace(job, deferred_since=dt.datetime.now(dt.UTC).isoformat())


def remember_headroom(ctx: Context, results: list[Result]) -> None:
    """The latest rate-limit view per model from these shadow answers, kept in Redis (only the
    last answer per model is read: the headers are parsed once per batch, not per sample)."""
    latest = {r.job.shadow_model: r.answer.headers for r in results
              if r.answer is not None and r.answer.headers is not None}
    views = {model: view for model, headers in latest.items() if (view := ratelimits.parse(headers))}
    for model, view in views.items():
        for family, (share, _) in view.items():
            metrics.HEADROOM.labels(model, family).set(share)
    try:
        for model, view in views.items():
            ratelimits.record(ctx.redis, model, view)
    except redis_lib.RedisError:
        pass  # the next answers bring it again


def announce_paused(ctx: Context, skipped: list[Result]) -> bool:
    """One shadows_paused event per model and hour for jobs given up on; whether one is new."""
    per_model: dict[str, int] = {}
    for r in skipped:
        per_model[r.job.shadow_model] = per_model.get(r.job.shadow_model, 0) + 1
    hour = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H")
    minutes = ctx.policy.shadow_headroom.max_defer_minutes
    try:
        with session(ctx.engine) as s:
            new = [for_shadows_paused(s, ctx.policy, m, n, minutes, hour) for m, n in per_model.items()]
            s.commit()
        return any(e is not None for e in new)
    except sa.exc.SQLAlchemyError as err:
        log.warning("cannot record the shadows_paused event: %s", err)
        return False


def pause_quietly(ctx: Context, model: str, seconds: float) -> float:
    try:
        return pauses.pause(ctx.redis, model, seconds)
    except redis_lib.RedisError:
        return time.time() + seconds


def defer_paused(ctx: Context, jobs: list[ShadowJob], attempt: int
                 ) -> tuple[list[ShadowJob], list[tuple[ShadowJob, float]], list[Result]]:
    """(jobs to call now, jobs to re-queue with their wait, jobs recorded as skipped)."""
    models = {j.shadow_model for j in jobs}
    try:
        waits = pauses.paused(ctx.redis, models)
        for model, (_, _, reset) in ratelimits.low(
                ctx.redis, models - set(waits), ctx.policy.shadow_headroom.min_remaining).items():
            waits[model] = reset  # production's headroom is short: wait for the reset
    except redis_lib.RedisError:
        return jobs, [], []  # no pause to read: call (a 429 will pause them)
    if not waits:
        return jobs, [], []
    now = time.time()
    limit = ctx.policy.shadow_headroom.max_defer_minutes * 60
    keep, deferred, skipped = [], [], []
    for job in jobs:
        until = waits.get(job.shadow_model)
        if until is None:
            keep.append(job)
            continue
        since = parse_time(job.deferred_since)
        if since is not None and now - since.timestamp() > limit:
            skipped.append(Result(job, None, None, (SKIPPED, f"rate_headroom: {job.shadow_model} "
                                                    f"paused for over {limit / 60:g} min"), attempt))
        else:
            deferred.append((deferred_copy(job), until - now))
    return keep, deferred, skipped


def count_deferred(ctx: Context, jobs: list[ShadowJob]) -> None:
    """Deferrals, for Prometheus and ``status`` (best effort)."""
    if not jobs:
        return
    log.info("%d job(s) deferred: their models are paused or short of rate-limit headroom", len(jobs))
    for job in jobs:
        metrics.DEFERRED.labels(job.shadow_model).inc()
    try:
        pipe = ctx.redis.pipeline(transaction=False)
        for job in jobs:
            pipe.hincrby(keys.DEFERRED, job.shadow_model, 1)
        pipe.execute()
    except redis_lib.RedisError:
        pass
