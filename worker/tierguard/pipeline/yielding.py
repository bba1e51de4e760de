"""Shadows yield to production's rate limits: the worker's side of :mod:`tierguard.headroom.deferral`.

Before a message's jobs are called, jobs whose models have no room (a pause, short
headroom, a hard cap) are set aside to be sent again later without spending an
attempt; one held past ``shadow_headroom.max_defer_minutes`` becomes a skipped
sample and, once per model and hour, a ``shadows_paused`` event. After the calls,
the latest rate-limit headers per model are kept for every worker to read and
output tokens are counted against the caps.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time

import redis as redis_lib
import sqlalchemy as sa

from tierguard.alerts.events import for_shadows_paused
from tierguard.contract.job import ShadowJob, parse_time
from tierguard.headroom.deferral import Room, waited_too_long
from tierguard.pipeline.challengers import picked
from tierguard.pipeline.context import Context
from tierguard.pipeline.results import Result
from tierguard.pipeline.shadow import SKIPPED, probe_rung
from tierguard.policy.model_limits import estimate_input_tokens
from tierguard.routing.challengers import Active
from tierguard.store.db import session

log = logging.getLogger(__name__)


def room(ctx: Context) -> Room:
    """The rate-limit room as the policy in force describes it."""
    return Room(ctx.redis, ctx.scope, ctx.policy.shadow_headroom, ctx.policy.shadow_limits, ctx.caps)


def deferred_copy(job: ShadowJob) -> ShadowJob:
    """``job`` marked with when it was first deferred (kept on later deferrals)."""
    if job.deferred_since:
        return job
    return dataclasses.replace(job, deferred_since=dt.datetime.now(dt.UTC).isoformat())


def remember_headroom(ctx: Context, results: list[Result]) -> None:
    """The latest rate-limit view per model from these answers (only the last answer per model is
    read: the headers are parsed once per message, not per sample)."""
    room(ctx).remember({r.job.shadow_model: r.answer.headers for r in results
                        if r.answer is not None and r.answer.headers is not None})


def caps_spent(ctx: Context, results: list[Result]) -> None:
    """Add the shadow answers' output tokens to their models' caps (``shadow_limits``)."""
    spent: dict[str, int] = {}
    for r in results:  # shadow and probe answers (a probe's job names its rung as shadow model)
        if r.answer is not None and not r.answer.batch:
            spent[r.job.shadow_model] = spent.get(r.job.shadow_model, 0) + (r.answer.output_tokens or 0)
    room(ctx).spent(spent)


def _models(ctx: Context, job: ShadowJob) -> list[str]:
    """The models a job must wait for: its shadow model and the judge's."""
    judge = ctx.policy.category(job.category).judge_model
    return sorted({job.shadow_model} | ({judge} if judge else set()))


def held_probes(ctx: Context, jobs: list[ShadowJob]) -> frozenset[str]:
    """The jobs whose probe is left out now: its rung has no room (a probe never holds its job
    back; a probe that goes is counted against the cap)."""
    probes = [(j, r) for j in jobs if (r := probe_rung(ctx.policy, j)) is not None]
    return frozenset(probes[i][0].job_id for i in _no_room(ctx, probes))


def challenged(ctx: Context, jobs: list[ShadowJob]) -> dict[str, list[str]]:
    """The challengers each job asks that have room now (like a probe, a challenger never holds
    its job back, and one that goes is counted against its cap)."""
    active = ctx.challengers or Active(None)
    calls = [(j, m) for j in jobs for m in picked(ctx.policy, lambda c: active.of(ctx.policy, c), j)]
    shut = _no_room(ctx, calls)
    out: dict[str, list[str]] = {}
    for i, (job, model) in enumerate(calls):
        if i not in shut:
            out.setdefault(job.job_id, []).append(model)
    return out


def _no_room(ctx: Context, calls: list[tuple[ShadowJob, str]]) -> set[int]:
    """The indices of ``calls`` (job, model) whose model has no room now (none when Redis fails)."""
    if not calls:
        return set()
    gates = room(ctx)
    try:
        shut = gates.shut({model for _, model in calls})
    except redis_lib.RedisError:
        return set()
    return {i for i, (job, model) in enumerate(calls)
            if any(g in shut for g in gates.gates(model))
            or gates.capped(model, estimate_input_tokens(job.request)) is not None}


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
    return room(ctx).pause(model, seconds)


def defer_paused(ctx: Context, jobs: list[ShadowJob], attempt: int
                 ) -> tuple[list[ShadowJob], list[tuple[ShadowJob, float]], list[Result]]:
    """(jobs to call now, jobs to send again with their wait, jobs recorded as skipped)."""
    gates = room(ctx)
    needed = {job.job_id: _models(ctx, job) for job in jobs}
    try:
        shut = gates.shut({m for ms in needed.values() for m in ms})
    except redis_lib.RedisError:
        return jobs, [], []  # no pause to read: call (a 429 will pause them)
    now = time.time()
    limit = ctx.policy.shadow_headroom.max_defer_minutes
    keep, deferred, skipped = [], [], []
    for job in jobs:
        until, why = max(gates.until(m, shut) for m in needed[job.job_id]), "paused"
        if until <= now:
            until, why = gates.capped(job.shadow_model, estimate_input_tokens(job.request)), "capped"
        if until is None or until <= now:
            keep.append(job)
        elif waited_too_long(parse_time(job.deferred_since), now, limit):
            skipped.append(Result(job, None, None, (SKIPPED, f"rate_headroom: {job.shadow_model} "
                                                    f"{why} for over {limit:g} min"), attempt))
        else:
            deferred.append((deferred_copy(job), until - now))
    return keep, deferred, skipped


def count_deferred(ctx: Context, jobs: list[ShadowJob]) -> None:
    """Deferrals, for Prometheus and ``status`` (best effort)."""
    if jobs:
        log.info("%d job(s) deferred: their models are paused or short of rate-limit headroom",
                 len(jobs))
        room(ctx).count_deferred([job.shadow_model for job in jobs])
