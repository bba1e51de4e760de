"""Shadows yield to production's rate limits: the worker's side of :mod:`tierguard.pauses`.

Before a batch is called, jobs whose model is paused (a 429), short of headroom
(the API's rate-limit headers, :mod:`tierguard.ratelimits`) or over its hard cap
(``shadow_limits``, :mod:`tierguard.shadow_caps`) are set aside to be
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
from tierguard.limits import estimate_input_tokens
from tierguard.pipeline.judging import needs_judge
from tierguard.pipeline.recorder import Result
from tierguard.pipeline.shadow import SKIPPED, Context, probe_rung

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
            ratelimits.record(ctx.redis, ratelimits.scoped(model, ctx.scope), view)
    except redis_lib.RedisError:
        pass  # the next answers bring it again


def caps_spent(ctx: Context, results: list[Result]) -> None:
    """Add the shadow answers' output tokens to their models' caps (``shadow_limits``)."""
    caps = ctx.policy.shadow_limits
    if not caps or ctx.caps is None:
        return
    spent: dict[str, int] = {}
    for r in results:  # shadow and probe answers (a probe's job names its rung as shadow model)
        if r.answer is not None and r.job.shadow_model in caps and not r.answer.batch:
            spent[r.job.shadow_model] = spent.get(r.job.shadow_model, 0) + (r.answer.output_tokens or 0)
    try:
        for model, tokens in spent.items():
            ctx.caps.spent(caps[model], ratelimits.scoped(model, ctx.scope), tokens)
    except redis_lib.RedisError as err:
        log.warning("cannot count shadow output tokens against the caps: %s", err)


def _gates(ctx: Context, model: str) -> list[str]:
    """The names whose pauses and headroom hold shadows to ``model`` back: the shadow key's own,
    and production's unless a separate key does not follow it."""
    own = ratelimits.scoped(model, ctx.scope)
    if ctx.scope and not ctx.policy.shadow_headroom.follow_production:
        return [own]
    return sorted({own, model})


def _models(ctx: Context, job: ShadowJob) -> list[str]:
    """The models a job must wait for: its shadow model and the judge's."""
    cat = ctx.policy.category(job.category)
    models = {job.shadow_model}
    if needs_judge(cat):
        models.add(cat.compare.model or cat.reference)  # type: ignore[attr-defined]
    return sorted(models)


def held_probes(ctx: Context, jobs: list[ShadowJob]) -> frozenset[str]:
    """The jobs whose probe is left out now: its rung is paused, short of headroom or over its cap
    (a probe never holds its job back; a probe that goes is counted against the cap)."""
    probes = {j.job_id: (j, r) for j in jobs if (r := probe_rung(ctx.policy, j)) is not None}
    if not probes:
        return frozenset()
    names = {g: r for _, r in probes.values() for g in _gates(ctx, r)}
    try:
        held = {names[g] for g in set(pauses.paused(ctx.redis, names)) | set(ratelimits.low(
            ctx.redis, names, ctx.policy.shadow_headroom.min_remaining))}
    except redis_lib.RedisError:
        return frozenset()
    out = set()
    for job_id, (job, rung) in probes.items():
        if rung in held or _capped(ctx, job, rung) is not None:
            out.add(job_id)
    return frozenset(out)


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
        return pauses.pause(ctx.redis, ratelimits.scoped(model, ctx.scope), seconds)
    except redis_lib.RedisError:
        return time.time() + seconds


def defer_paused(ctx: Context, jobs: list[ShadowJob], attempt: int
                 ) -> tuple[list[ShadowJob], list[tuple[ShadowJob, float]], list[Result]]:
    """(jobs to call now, jobs to re-queue with their wait, jobs recorded as skipped).

    A job waits while a model it calls is paused, short of headroom, or over its cap."""
    needed = {job.job_id: _models(ctx, job) for job in jobs}
    names = sorted({g for ms in needed.values() for m in ms for g in _gates(ctx, m)})
    try:
        waits = pauses.paused(ctx.redis, names)
        for name, (_, _, until) in ratelimits.low(
                ctx.redis, set(names) - set(waits), ctx.policy.shadow_headroom.min_remaining).items():
            waits[name] = until  # the headroom is short: wait until it is back at the floor
    except redis_lib.RedisError:
        return jobs, [], []  # no pause to read: call (a 429 will pause them)
    now = time.time()
    limit = ctx.policy.shadow_headroom.max_defer_minutes * 60
    keep, deferred, skipped = [], [], []
    for job in jobs:
        until = max((waits.get(g, 0.0) for m in needed[job.job_id] for g in _gates(ctx, m)),
                    default=0.0)
        why = "paused"
        if until <= now:
            until, why = _capped(ctx, job), "capped"
        if until is None or until <= now:
            keep.append(job)
            continue
        since = parse_time(job.deferred_since)
        if since is not None and now - since.timestamp() > limit:
            skipped.append(Result(job, None, None, (SKIPPED, f"rate_headroom: {job.shadow_model} "
                                                    f"{why} for over {limit / 60:g} min"), attempt))
        else:
            deferred.append((deferred_copy(job), until - now))
    return keep, deferred, skipped


def _capped(ctx: Context, job: ShadowJob, model: str | None = None) -> float | None:
    """Until when ``job``'s call to ``model`` (its shadow model) waits for that model's cap (None:
    it may go, and it is counted)."""
    model = model or job.shadow_model
    cap = ctx.policy.shadow_limits.get(model)
    if cap is None or ctx.caps is None:
        return None
    try:
        return ctx.caps.take(cap, ratelimits.scoped(model, ctx.scope),
                             estimate_input_tokens(job.request))
    except redis_lib.RedisError as err:  # no count to keep: the call goes (fail open)
        log.warning("shadow caps unavailable (%s); calling without them", err)
        return None


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
