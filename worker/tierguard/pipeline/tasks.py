"""Thin Celery tasks: deserialize, call plain functions, decide retries."""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Any

import anthropic
import redis as redis_lib
import sqlalchemy as sa
from celery import Celery, Task
from celery.signals import worker_ready

from tierguard import headroom_log, job_store, keys, maintenance, ratelimits, rates, traffic
from tierguard.alerts.events import for_invalid_policy
from tierguard.alerts.monitors import check
from tierguard.alerts.outbox import deliver_due
from tierguard.broker import (
    BATCH_TASK,
    BATCHES_TASK,
    DELIVER_TASK,
    MAINTAIN_TASK,
    MONITOR_TASK,
    SHADOW_TASK,
    make_celery,
)
from tierguard.config import Settings
from tierguard.db import make_engine, session
from tierguard.errors import ConfigError, PayloadInvalid
from tierguard.job import ShadowJob
from tierguard.live_policy import LivePolicy
from tierguard.pipeline import batches
from tierguard.pipeline.batcher import BatchRecorder
from tierguard.pipeline.fanout import POOL_SHARD, LoopRunner, async_client, run_batch
from tierguard.pipeline.recorder import Result
from tierguard.pipeline.shadow import Context, skipped
from tierguard.pipeline.yielding import (
    announce_paused,
    caps_spent,
    count_deferred,
    defer_paused,
    deferred_copy,
    held_probes,
    pause_quietly,
    remember_headroom,
)
from tierguard.policy import Policy, valid_category
from tierguard.routes import ensure_categories
from tierguard.sealing import open_job, seal_job, sealer
from tierguard.shadow_caps import ShadowCaps

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
    key = settings.shadow_api_key.get_secret_value() if settings.shadow_api_key else None
    runner = LoopRunner(lambda: async_client(settings.shadow_timeout, api_key=key),
                        shards=settings.max_in_flight // POOL_SHARD)
    ctx = Context(policy=live.current, engine=engine, redis=r, recorder=batcher.record_all,
                  runner=runner, sealer=sealer(settings),
                  scope=ratelimits.fingerprint(key) if key else "", caps=ShadowCaps(settings.redis_url))
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
    parsed = _parsed(jobs)
    if not all(valid_category(j.category) for j in parsed):  # a producer that skips the checks
        log.warning("dropping %d job(s) with an invalid category name",
                    sum(not valid_category(j.category) for j in parsed))
        parsed = [j for j in parsed if valid_category(j.category)]
    attempt = task.request.retries + 1
    try:
        parsed, expired = job_store.load(ctx.redis, parsed)
    except redis_lib.RedisError as err:  # the payloads are there, Redis is not: later, nothing lost
        log.warning("batch of %d: stored payloads unreadable (%s); retry", len(parsed), type(err).__name__)
        raise task.retry(countdown=backoff(min(attempt, 6), None, settings.retry_after_cap)) from None
    opened, refused = [], [Result(job, None, None, (job_store.EXPIRED, "the job's stored payload "
                                  "expired before a worker ran it (TIERGUARD_JOB_PAYLOAD_TTL_S)"),
                                  attempt) for job in expired]
    for job in parsed:
        try:
            opened.append(open_job(job, ctx.sealer))
        except PayloadInvalid as err:  # recorded as an error, never executed
            log.warning("job %s: %s", job.job_id, err)
            refused.append(Result(job, None, None, ("payload_invalid", str(err)), attempt))
    opened, via_batch = _by_batch(ctx, opened, refused, attempt)
    opened, deferred, too_long = defer_paused(ctx, opened, attempt)
    refused += too_long
    try:
        if via_batch:  # kept for the next Message Batch; beat sends and collects it
            batches.enqueue(ctx, via_batch, attempt)
        limited: dict[str, float] = {}
        results, retries = ctx.runner.run(run_batch(
            ctx.runner, ctx.policy, opened, attempt=attempt,
            final=attempt >= settings.shadow_max_attempts,
            held=held_probes(ctx, opened), limited=limited)) if opened else ([], [])
        for rung, wait in limited.items():  # a probe's 429: later probes and shadows to it wait
            pause_quietly(ctx, rung, min(wait, settings.retry_after_cap) or 10.0)
        results = refused + results
        remember_headroom(ctx, results)
        caps_spent(ctx, results)
        outcomes = ctx.record_all(results) if results else []
        job_store.forget(ctx.redis, [r.job for r in results] + via_batch)
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
            deferred.append((deferred_copy(item.job), max(delay, until - time.time())))
            continue
        log.info("job %s: %s; retry %d in %.1fs", item.job.job_id, item.error.kind, attempt, delay)
        task.app.send_task(SHADOW_TASK, args=[_travelling(ctx, item.job)], task_id=item.job.job_id,
                           queue=settings.queue, countdown=delay, retries=attempt)
    for job, wait in deferred:  # a pause spends no attempt
        task.app.send_task(SHADOW_TASK, args=[_travelling(ctx, job)], task_id=job.job_id,
                           queue=settings.queue, countdown=wait + random.uniform(0, 1),
                           retries=attempt - 1)
    count_deferred(ctx, [job for job, _ in deferred])
    if too_long and announce_paused(ctx, too_long):
        task.app.send_task(DELIVER_TASK, queue=settings.queue)
    if any(o.events for o in outcomes):
        task.app.send_task(DELIVER_TASK, queue=settings.queue)
    return {"recorded": sum(o.status != "duplicate" for o in outcomes), "retried": len(retries),
            "deferred": len(deferred)}


def _parsed(jobs: list[Any]) -> list[ShadowJob]:
    """The jobs of a message; one that is not a job at all (no id to record it under) is logged
    and left out, never the end of the others."""
    out = []
    for raw in jobs:
        try:
            out.append(ShadowJob.from_dict(raw))
        except (TypeError, ValueError, AttributeError) as err:
            log.error("dropping a message entry that is not a shadow job (%s: %s)", type(err).__name__,
                      str(err)[:200])
    return out


def _travelling(ctx: Context, job: ShadowJob) -> dict[str, Any]:
    """A job re-queued: sealed again, and by reference when its payload is stored."""
    return (job_store.strip(job) if job.payload_ref else seal_job(job, ctx.sealer)).to_dict()


def _by_batch(ctx: Context, jobs: list[ShadowJob], refused: list[Result], attempt: int
              ) -> tuple[list[ShadowJob], list[ShadowJob]]:
    """(jobs to call now, jobs for a batch); a batch job its model cannot take is skipped now."""
    now, later = [], []
    for job in jobs:
        if ctx.policy.category(job.category).shadow_via != "batch" or job.headers:
            now.append(job)  # a beta request's headers are per request: no Message Batch carries them
        elif (skip := skipped(ctx.policy, job, attempt)) is not None:
            refused.append(skip)
        else:
            later.append(job)
    return now, later


def batch_cycle(task: Task) -> dict[str, int]:
    """Send the Message Batches that are due and collect the ended ones (one worker at a time)."""
    settings: Settings = task.app.tierguard_settings
    ctx = context_for(task.app)
    lock = ctx.redis.lock(keys.BATCH_LOCK, timeout=max(600.0, 10 * settings.batch_poll_seconds),
                          blocking=False)
    if not lock.acquire():
        return {"busy": 1}
    try:
        if ctx.batch_client is None:
            key = settings.shadow_api_key
            # No SDK retries: a create retried after a timeout may make a second batch; the next
            # cycle sends it again instead, and collecting is idempotent.
            ctx.batch_client = anthropic.Anthropic(api_key=key.get_secret_value() if key else None,
                                                   max_retries=0, timeout=settings.shadow_timeout)
        counts, outcomes = batches.cycle(ctx, ctx.batch_client, settings.shadow_max_attempts)
    except sa.exc.OperationalError as err:  # the database is down: the next cycle does it
        log.warning("batch shadows wait for the database: %s", type(err.orig).__name__)
        return {"database_unavailable": 1}
    finally:
        try:
            lock.release()
        except redis_lib.exceptions.RedisError:
            pass  # expired (a long cycle) or Redis gone: it lapses by itself
    if any(o.events for o in outcomes):
        task.app.send_task(DELIVER_TASK, queue=settings.queue)
    return dict(counts)


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
    try:
        headroom_log.snapshot(ctx.engine, ctx.redis, headroom_log.models_of(ctx.policy), ctx.scope)
    except Exception as err:
        log.warning("cannot keep the rate-limit headroom for the dashboard yet: %s", err)
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
    app.task(name=BATCHES_TASK, bind=True, ignore_result=True)(batch_cycle)
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
