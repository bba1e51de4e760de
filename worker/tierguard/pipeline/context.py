"""What running shadow jobs needs, built once per worker process: :class:`Context`."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis as redis_lib
import sqlalchemy as sa
from celery import Celery
from sqlalchemy.engine import Engine

from tierguard.alerts.events import for_invalid_policy
from tierguard.alerts.outbox import deliver_due
from tierguard.config import Settings
from tierguard.contract.sealing import sealer
from tierguard.errors import ConfigError
from tierguard.headroom import ratelimits
from tierguard.headroom.caps import ShadowCaps
from tierguard.pipeline.fanout import POOL_SHARD, LoopRunner, async_client
from tierguard.pipeline.recorder import record_many
from tierguard.pipeline.results import Outcome, Result
from tierguard.pipeline.writer import Writer
from tierguard.policy import Policy
from tierguard.policy.live import LivePolicy
from tierguard.routing.challengers import Active
from tierguard.routing.routes import ensure_categories
from tierguard.store.db import make_engine, session

log = logging.getLogger(__name__)
_lock = threading.Lock()


@dataclass
class Context:
    """What running jobs needs; a worker builds one per process.

    Jobs are called through ``runner`` (a :class:`tierguard.pipeline.fanout.LoopRunner`);
    ``recorder`` stores results (by default in one transaction per call).
    """

    policy: Policy
    engine: Engine
    redis: redis_lib.Redis | None = None
    recorder: Callable[[list[Result]], list[Outcome]] | None = None
    runner: Any = None
    sealer: Any = None  # a tierguard.contract.sealing.Sealer when TIERGUARD_PAYLOAD_KEYS is set
    batch_client: Any = None  # the anthropic.Anthropic client Message Batches use, made lazily
    scope: str = ""  # TIERGUARD_SHADOW_API_KEY's fingerprint: its own pauses and headroom
    caps: Any = None  # a tierguard.headroom.caps.ShadowCaps (policy shadow_limits)
    answers_ttl_s: float = 86_400  # how long answers paid for are kept unrecorded (pipeline/answers)
    claim_ttl_s: float = 30.0  # a run's claim on its jobs, extended while it runs (pipeline/answers)
    platform: str = "anthropic"  # TIERGUARD_SHADOW_PLATFORM: no Message Batches off Anthropic's API
    challengers: Any = None  # a tierguard.routing.challengers.Active (the policy's only when None)

    def record_all(self, results: list[Result]) -> list[Outcome]:
        if self.recorder is not None:
            return self.recorder(results)
        return record_many(self.engine, self.redis, self.policy, results)


def build_context(settings: Settings) -> Context:
    engine = make_engine(settings.database_url, pool_size=4)
    r = redis_lib.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=2)

    def changed(old: Policy, new: Policy) -> None:
        new.warm()
        ctx.policy = writer.policy = new
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
    writer = Writer(engine, r, live.current)
    key = settings.shadow_api_key.get_secret_value() if settings.shadow_api_key else None
    runner = LoopRunner(lambda: async_client(settings.shadow_timeout, api_key=key,
                                             platform=settings.shadow_platform, policy=lambda: ctx.policy),
                        shards=settings.max_in_flight // POOL_SHARD, compare_timeout=settings.compare_timeout,
                        loop=settings.worker_loop)
    ctx = Context(policy=live.current, engine=engine, redis=r, recorder=writer.record_all,
                  runner=runner, sealer=sealer(settings),
                  scope=ratelimits.fingerprint(key) if key else "", caps=ShadowCaps(settings.redis_url),
                  answers_ttl_s=settings.job_payload_ttl_s,
                  claim_ttl_s=min(30.0, settings.visibility_timeout), platform=settings.shadow_platform,
                  challengers=Active(engine))
    live.start()
    return ctx


def context_for(app: Celery) -> Context:
    """The worker process's context, built on first use."""
    ctx = getattr(app, "tierguard_context", None)
    if ctx is None:
        with _lock:
            ctx = getattr(app, "tierguard_context", None)
            if ctx is None:
                ctx = app.tierguard_context = build_context(app.tierguard_settings)
    return ctx
