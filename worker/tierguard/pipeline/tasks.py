"""Thin Celery tasks: deserialize, call plain functions, decide retries.

``shadow_batch`` (task ``tierguard.pipeline.shadow_batch``: a message of many shadow jobs; the
name predates Message Batches and is kept for compatibility) and ``shadow`` (one job) run
:func:`tierguard.pipeline.flow.run`; ``batch_cycle`` sends and collects Message Batches;
``run_sentinels`` runs the categories whose sentinels are due; ``read_models`` reads the API's model
list (at beat's start and every ``TIERGUARD_MODELS_POLL_SECONDS``); the others are beat's periodic work.
"""

from __future__ import annotations

import logging
from typing import Any

import anthropic
import redis as redis_lib
import sqlalchemy as sa
from celery import Celery, Task
from celery.signals import worker_process_shutdown, worker_ready, worker_shutdown

from tierguard.alerts.monitors import check
from tierguard.alerts.outbox import deliver_due
from tierguard.config import Settings
from tierguard.contract import keys
from tierguard.contract.broker import (
    BATCH_TASK,
    BATCHES_TASK,
    DELIVER_TASK,
    MAINTAIN_TASK,
    MODELS_TASK,
    MONITOR_TASK,
    SENTINELS_TASK,
    SHADOW_TASK,
    beat_entries,
    job_reprs,
    make_celery,
)
from tierguard.errors import StoreUnavailable
from tierguard.headroom import history
from tierguard.otlp import exporter as otlp
from tierguard.pipeline import (
    escalations,
    flow,
    listed_models,
    message_batches,
    retirements,
    rollouts,
    sentinels,
    yielding,
)
from tierguard.pipeline.broker_transport import transport_for
from tierguard.pipeline.context import context_for
from tierguard.pipeline.flow import backoff
from tierguard.pipeline.locks import held
from tierguard.routing import rates
from tierguard.store import maintenance, traffic

log = logging.getLogger(__name__)
UNEXPECTED_ERROR_ATTEMPTS = 8
LOCK_TTL_S = 30.0  # the Message Batches lock lapses this long after its holder dies


def shadow(task: Task, job: dict[str, Any]) -> dict[str, int]:
    """One job (a retry, or a producer that does not batch): a message of one."""
    return shadow_batch(task, [job])


def shadow_batch(task: Task, jobs: list[dict[str, Any]]) -> dict[str, int]:
    """Many jobs in one message (:func:`tierguard.pipeline.flow.run`); jobs to run again are sent
    as ``shadow`` tasks before this message is acknowledged."""
    settings: Settings = task.app.tierguard_settings
    attempt = task.request.retries + 1
    try:
        after = flow.run(context_for(task.app), jobs, attempt, max_attempts=settings.shadow_max_attempts,
                         retry_cap=settings.retry_after_cap, max_countdown=settings.visibility_timeout / 2,
                         fresh=fresh(task))
    except StoreUnavailable as err:  # nothing lost: the message waits for the store
        delay = min(backoff(min(attempt, 6), None, settings.retry_after_cap), settings.visibility_timeout / 2)
        log.warning("message of %d job(s): %s; retry in %.1fs", len(jobs), err, delay)
        raise task.retry(countdown=delay) from None
    except Exception as err:
        if attempt >= UNEXPECTED_ERROR_ATTEMPTS:
            raise
        log.exception("message of %d job(s) failed unexpectedly; retry %d", len(jobs), attempt)
        raise task.retry(countdown=min(backoff(attempt, None, settings.retry_after_cap),
                                       settings.visibility_timeout / 2)) from err
    for again in after.again:
        task.app.send_task(SHADOW_TASK, args=[again.job], task_id=again.job_id, queue=settings.queue,
                           countdown=again.delay, retries=again.retries, **job_reprs())
    if after.deliver:
        task.app.send_task(DELIVER_TASK, queue=settings.queue)
    return after.counts()


def fresh(task: Task) -> bool:
    """Whether ``task`` runs a message of the publisher's on its first delivery: a ``shadow_batch``
    neither retried nor redelivered (a message restored after a worker died, or requeued, is marked
    ``redelivered``; a job sent again travels as a ``shadow`` task)."""
    info = task.request.delivery_info or {}
    return task.name == BATCH_TASK and not task.request.retries and not info.get("redelivered")


def beat_due(task: Task, beat: bool) -> bool:
    """Whether a periodic task runs now: always when sent by tierguard itself; once per period when
    sent by beat (a backlog of beat's sends, left while workers were down, runs once)."""
    if not beat:
        return True
    settings: Settings = task.app.tierguard_settings
    period = {t: p for _, t, p in beat_entries(settings)}.get(task.name, 60.0)
    try:
        return bool(context_for(task.app).redis.set(keys.BEAT.format(task=task.name), "1", nx=True,
                                                    px=max(1, int(period * 800))))
    except redis_lib.RedisError:
        return True  # no record to read: run (each periodic task is idempotent)


def batch_cycle(task: Task, beat: bool = False) -> dict[str, int]:
    """Send the Message Batches that are due and collect the ended ones (one worker at a time)."""
    settings: Settings = task.app.tierguard_settings
    if not beat_due(task, beat):
        return {"skipped": 1}
    ctx = context_for(task.app)
    with held(ctx.redis, keys.BATCH_LOCK, LOCK_TTL_S) as ours:
        if not ours:
            return {"busy": 1}
        try:
            if ctx.batch_client is None:
                key = settings.shadow_api_key
                # No SDK retries: a create retried after a timeout may make a second batch; the next
                # cycle looks for it at the API instead (pipeline/batch_creates).
                ctx.batch_client = anthropic.Anthropic(api_key=key.get_secret_value() if key else None,
                                                       max_retries=0, timeout=settings.shadow_timeout)
            counts, outcomes = message_batches.cycle(ctx, ctx.batch_client, settings.shadow_max_attempts,
                                                     owned=ours.still,
                                                     unseen_after=2 * settings.shadow_timeout)
        except sa.exc.OperationalError as err:  # the database is down: the next cycle does it
            log.warning("batch shadows wait for the database: %s", type(err.orig).__name__)
            return {"database_unavailable": 1}
    if any(o.events for o in outcomes):
        task.app.send_task(DELIVER_TASK, queue=settings.queue)
    return dict(counts)


def deliver_alerts(task: Task, beat: bool = False) -> dict[str, int]:
    """Send every due alert; run after each event and every few seconds by beat."""
    if not beat_due(task, beat):
        return {"skipped": 1}
    ctx = context_for(task.app)
    return dict(deliver_due(ctx.engine, ctx.policy))


def monitor(task: Task, beat: bool = False) -> int:
    """The periodic checks; new events are delivered right away."""
    if not beat_due(task, beat):
        return 0
    ctx = context_for(task.app)
    # None of these stops the monitor's checks below.
    try:
        traffic.fold(ctx.engine, ctx.redis, policy=ctx.policy)
    except Exception as err:
        log.warning("cannot fold production traffic counters yet: %s", err)
    demoted: list = []
    try:
        demoted = escalations.watch(ctx.engine, ctx.redis, ctx.policy)
    except Exception as err:
        log.warning("cannot watch escalations yet: %s", err)
    retired = retirements.Checked()
    try:
        retired = retirements.check(ctx.engine, ctx.redis, ctx.policy)
    except Exception as err:
        log.warning("cannot check model retirements yet: %s", err)
    try:
        for line in rollouts.advance(ctx.engine, ctx.redis, ctx.policy):
            log.warning("rollout: %s", line)
    except Exception as err:
        log.warning("cannot move the staged rollouts on yet: %s", err)
    try:
        rates.refresh(ctx.engine, ctx.redis, ctx.policy)
    except Exception as err:
        log.warning("cannot publish the adaptive sample rates yet: %s", err)
    try:
        history.snapshot(ctx.engine, ctx.redis, history.models_of(ctx.policy), ctx.scope)
    except Exception as err:
        log.warning("cannot keep the rate-limit headroom for the dashboard yet: %s", err)
    events = check(ctx.engine, ctx.redis, ctx.policy, task.app.tierguard_settings.queue)
    if events or demoted or retired.events:
        deliver_due(ctx.engine, ctx.policy)
    return events + len(demoted) + retired.events


def maintain(task: Task, beat: bool = False) -> dict:
    """One pass of the periodic maintenance (counters folded, retention applied)."""
    if not beat_due(task, beat):
        return {"skipped": 1}
    ctx = context_for(task.app)
    return maintenance.run(ctx.engine, ctx.redis, ctx.policy)


def run_sentinels(task: Task, beat: bool = False) -> dict[str, Any]:
    """The categories whose sentinels are due, run now (each under its own lock)."""
    settings: Settings = task.app.tierguard_settings
    if not beat_due(task, beat):
        return {"skipped": 1}
    ctx = context_for(task.app)
    ran = sentinels.run_due(ctx.redis, ctx.engine, ctx.policy, attempts=settings.shadow_max_attempts,
                            client=sentinels.shadow_clients(settings, lambda: ctx.policy),
                            room=yielding.room(ctx))
    if any(isinstance(r, dict) and r.get("event") for rungs in ran.values() for r in rungs.values()):
        deliver_due(ctx.engine, ctx.policy)
    return ran


def read_models(task: Task, beat: bool = False) -> dict[str, Any]:
    """Read and keep the models the API lists (never raises: a failure is logged and counted)."""
    settings: Settings = task.app.tierguard_settings
    if not beat_due(task, beat):
        return {"skipped": 1}
    if settings.shadow_platform != "anthropic":  # Bedrock and Vertex have no Models API to read
        return {"skipped": settings.shadow_platform}
    ctx = context_for(task.app)
    if ctx.redis is None:
        return {"failed": "redis"}
    try:
        client = listed_models.client_for(settings)
    except Exception as err:  # e.g. no API key in the environment
        log.warning("cannot read the API's model list: %s", type(err).__name__)
        return {"failed": "client"}
    with client:
        return listed_models.refresh(ctx.redis, client)


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
    app.task(name=SENTINELS_TASK, bind=True, ignore_result=True)(run_sentinels)
    app.task(name=MODELS_TASK, bind=True, ignore_result=True)(read_models)
    return app


def worker_app(settings: Settings) -> Celery:
    """The Celery app with tierguard's tasks registered: what ``tierguard worker`` runs."""
    app = register(make_celery(settings))
    transport = transport_for(settings.redis_url)
    if transport is not None:  # one command client per channel, not one per ack (broker_transport)
        app.conf.broker_transport = transport

    def ready(sender: Any = None, **_: Any) -> None:
        # Connections, policy and detector designs before the first job, not in it.
        if getattr(sender, "app", None) is app:
            try:
                context_for(app)
            except Exception as err:  # the first task will try again and report it
                log.warning("worker context not built at start: %s", err)

    def flush_exports(**_: Any) -> None:  # a prefork child's, or the worker's, spans still queued
        otlp.flush(2.0)

    worker_ready.connect(ready, weak=False)
    worker_process_shutdown.connect(flush_exports, weak=False)
    worker_shutdown.connect(flush_exports, weak=False)
    return app
