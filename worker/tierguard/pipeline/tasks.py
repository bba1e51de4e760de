"""Thin Celery tasks: deserialize, call plain functions, decide retries."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import random
import threading
import time
from typing import Any

import redis as redis_lib
import sqlalchemy as sa
from celery import Celery, Task
from celery.signals import worker_ready

from tierguard import keys, maintenance, metrics, pauses, ratelimits, rates, traffic
from tierguard.alerts.events import for_invalid_policy, for_shadows_paused
from tierguard.alerts.monitors import check
from tierguard.alerts.outbox import deliver_due
from tierguard.broker import (
    BATCH_TASK,
    DELIVER_TASK,
    MAINTAIN_TASK,
    MONITOR_TASK,
    SHADOW_TASK,
    make_celery,
)
from tierguard.config import Settings
from tierguard.db import make_engine, session
from tierguard.errors import ConfigError, PayloadInvalid
from tierguard.job import ShadowJob, parse_time
from tierguard.live_policy import LivePolicy
from tierguard.pipeline.batcher import BatchRecorder
from tierguard.pipeline.fanout import POOL_SHARD, LoopRunner, async_client, run_batch
from tierguard.pipeline.recorder import Result
from tierguard.pipeline.shadow import SKIPPED, Context
from tierguard.policy import Policy, valid_category
from tierguard.routes import ensure_categories
from tierguard.sealing import open_job, seal_job, sealer

log = logging.getLogger(__name__)
_lock = threading.Lock()
UNEXPECTED_ERROR_ATTEMPTS = 8


def build_context(settings: Settings) -> Context:
    engine = make_engine(settings.database_url, pool_size=4)
    r = redis_lib.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=2)

    def changed(old: Policy, new: Policy) -> None:
        new.warm()
        ctx.policy = batcher.policy = new
        ensure_categories(engine, new)  # the database's copies (threshold, sample rate) follow

    def invalid(err: ConfigError, digest: str) -> None:
        try:
            with session(engine) as s:
                for_invalid_policy(s, ctx.policy, str(settings.policy), err.problems, digest)
                s.commit()
            deliver_due(engine, ctx.policy)
        except sa.exc.SQLAlchemyError as db_err:
            log.warning("cannot record the invalid policy event: %s", db_err)

    live = LivePolicy(settings.policy, settings.policy_reload_s, changed, invalid)
    live.current.warm()
    batcher = BatchRecorder(engine, r, live.current)
    runner = LoopRunner(lambda: async_client(settings.shadow_timeout),
                        shards=settings.max_in_flight // POOL_SHARD)
    ctx = Context(policy=live.current, engine=engine, redis=r, recorder=batcher.record_all,
                  runner=runner, sealer=sealer(settings))
    live.start()
    return ctx


def context_for(app: Celery) -> Context:
    ctx = getattr(app, "tierguard_context", None)
    if ctx is None:
        with _lock:
            ctx = getattr(app, "tierguard_context", None)
            if ctx is None:
                ctx = app.tierguard_context = build_context(app.tierguard_settings)
    return ctx


def backoff(attempt: int, retry_after: float | None, cap: float) -> float:
    """Seconds before retry ``attempt`` + 1: the server's retry-after (capped) or jittered 2^n."""
    if retry_after is not None:
        return min(retry_after, cap)
    return min(cap, 0.5 * 2 ** (attempt - 1) * random.uniform(0.8, 1.2))


def shadow(task: Task, job: dict[str, Any]) -> dict[str, int]:
    """One job (a retry, or a producer that does not batch): a batch of one."""
    return shadow_batch(task, [job])


def shadow_batch(task: Task, jobs: list[dict[str, Any]]) -> dict[str, int]:
    """Many jobs in one message: all calls in flight at once, their results in one transaction.

    Jobs whose call failed transiently are re-queued one by one as ``shadow``
    tasks (with backoff) before this message is acknowledged.
    """
    settings: Settings = task.app.tierguard_settings
    ctx = context_for(task.app)
    parsed = [ShadowJob.from_dict(j) for j in jobs]
    if not all(valid_category(j.category) for j in parsed):  # a producer that skips the checks
        log.warning("dropping %d job(s) with an invalid category name",
                    sum(not valid_category(j.category) for j in parsed))
        parsed = [j for j in parsed if valid_category(j.category)]
    attempt = task.request.retries + 1
    opened, refused = [], []
    for job in parsed:
        try:
            opened.append(open_job(job, ctx.sealer))
        except PayloadInvalid as err:  # recorded as an error, never executed
            log.warning("job %s: %s", job.job_id, err)
            refused.append(Result(job, None, None, ("payload_invalid", str(err)), attempt))
    opened, deferred, too_long = defer_paused(ctx, opened, attempt)
    refused += too_long
    try:
        results, retries = ctx.runner.run(run_batch(
            ctx.runner, ctx.policy, opened, attempt=attempt,
            final=attempt >= settings.shadow_max_attempts)) if opened else ([], [])
        results = refused + results
        remember_headroom(ctx, results)
        outcomes = ctx.record_all(results) if results else []
    except sa.exc.OperationalError as err:
        # The database is down: keep the jobs until it is back (nothing lost).
        delay = backoff(min(attempt, 6), None, settings.retry_after_cap)
        log.warning("batch of %d: database unavailable (%s); retry in %.1fs", len(parsed),
                    type(err.orig).__name__, delay)
        raise task.retry(countdown=delay) from None
    except Exception as err:
        if attempt >= UNEXPECTED_ERROR_ATTEMPTS:
            raise
        log.exception("batch of %d failed unexpectedly; retry %d", len(parsed), attempt)
        raise task.retry(countdown=backoff(attempt, None, settings.retry_after_cap)) from err
    for item in retries:
        delay = backoff(attempt, item.error.retry_after, settings.retry_after_cap)
        if item.error.kind == "rate_limited":  # its own 429: every shadow to that model waits
            until = pause_quietly(ctx, item.job.shadow_model, delay)
            deferred.append((_deferred(item.job), max(delay, until - time.time())))
            continue
        log.info("job %s: %s; retry %d in %.1fs", item.job.job_id, item.error.kind, attempt, delay)
        task.app.send_task(SHADOW_TASK, args=[seal_job(item.job, ctx.sealer).to_dict()],
                           task_id=item.job.job_id,
                           queue=settings.queue, countdown=delay, retries=attempt)
    for job, wait in deferred:  # a pause spends no attempt
        task.app.send_task(SHADOW_TASK, args=[seal_job(job, ctx.sealer).to_dict()], task_id=job.job_id,
                           queue=settings.queue, countdown=wait + random.uniform(0, 1),
                           retries=attempt - 1)
    if deferred:
        log.info("%d job(s) deferred: their models are paused or short of rate-limit headroom",
                 len(deferred))
        for job, _ in deferred:
            metrics.DEFERRED.labels(job.shadow_model).inc()
        try:
            pipe = ctx.redis.pipeline(transaction=False)
            for job, _ in deferred:
                pipe.hincrby(keys.DEFERRED, job.shadow_model, 1)
            pipe.execute()
        except redis_lib.RedisError:
            pass
    if too_long and announce_paused(ctx, too_long):
        task.app.send_task(DELIVER_TASK, queue=settings.queue)
    if any(o.events for o in outcomes):
        task.app.send_task(DELIVER_TASK, queue=settings.queue)
    return {"recorded": sum(o.status != "duplicate" for o in outcomes), "retried": len(retries),
            "deferred": len(deferred)}


def _deferred(job: ShadowJob) -> ShadowJob:
    if job.deferred_since:
        return job
    return dataclasses.replace(job, deferred_since=dt.datetime.now(dt.UTC).isoformat())


def remember_headroom(ctx: Context, results: list[Result]) -> None:
    """The latest rate-limit view per model from these shadow answers, kept in Redis."""
    latest = {r.job.shadow_model: r.answer.ratelimit for r in results
              if r.answer is not None and r.answer.ratelimit}
    for model, view in latest.items():
        for family, (share, _) in view.items():
            metrics.HEADROOM.labels(model, family).set(share)
    try:
        for model, view in latest.items():
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
            deferred.append((_deferred(job), until - now))
    return keep, deferred, skipped


def deliver_alerts(task: Task) -> dict[str, int]:
    """Send every due alert; run after each event and every few seconds by beat."""
    ctx = context_for(task.app)
    return dict(deliver_due(ctx.engine, ctx.policy))


def monitor(task: Task) -> int:
    """The periodic checks; new events are delivered right away."""
    ctx = context_for(task.app)
    # Neither stops the monitor's checks below.
    try:
        traffic.fold(ctx.engine, ctx.redis, policy=ctx.policy)
    except Exception as err:
        log.warning("cannot fold production traffic counters yet: %s", err)
    try:
        rates.refresh(ctx.engine, ctx.redis, ctx.policy)
    except Exception as err:
        log.warning("cannot publish the adaptive sample rates yet: %s", err)
    events = check(ctx.engine, ctx.redis, ctx.policy, task.app.tierguard_settings.queue)
    if events:
        deliver_due(ctx.engine, ctx.policy)
    return events


def maintain(task: Task) -> dict:
    """One pass of the periodic maintenance (counters folded, retention applied)."""
    ctx = context_for(task.app)
    return maintenance.run(ctx.engine, ctx.redis, ctx.policy)


def register(app: Celery) -> Celery:
    # max_retries=None: tierguard decides when to stop (shadow_max_attempts for the model API;
    # never for a database outage), not Celery's default of 3.
    durable = dict(bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None)
    app.task(name=SHADOW_TASK, **durable)(shadow)
    app.task(name=BATCH_TASK, **durable)(shadow_batch)
    app.task(name=DELIVER_TASK, bind=True, ignore_result=True)(deliver_alerts)
    app.task(name=MONITOR_TASK, bind=True, ignore_result=True)(monitor)
    app.task(name=MAINTAIN_TASK, bind=True, ignore_result=True)(maintain)
    return app


def worker_app(settings: Settings) -> Celery:
    """The Celery app with tierguard's tasks registered: what ``tierguard worker`` runs."""
    app = register(make_celery(settings))

    def ready(sender: Any = None, **_: Any) -> None:
        # Connections, policy and detector designs before the first job, not in it.
        if getattr(sender, "app", None) is app:
            try:
                context_for(app)
            except Exception as err:  # the first task will try again and report it
                log.warning("worker context not built at start: %s", err)

    worker_ready.connect(ready, weak=False)
    return app
