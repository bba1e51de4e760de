"""The worker's probes, served beside ``/metrics`` (no new process per probe).

``/livez`` asks only about this process: the shadow-call event loop still runs
a no-op within 5 s. It never looks at Redis or the database, so an outage of
either (which the worker rides out, jobs waiting in the broker) never restarts
workers. ``/readyz`` adds the broker: a Redis ``PING`` within 2 s.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import redis as redis_lib
from celery import Celery

from tierguard.config import Settings, mask_url

LOOP_TIMEOUT_S = 5.0


def probes(app: Celery, settings: Settings) -> dict[str, Callable[[], tuple[bool, str]]]:
    client: dict[str, Any] = {}

    def live() -> tuple[bool, str]:
        ctx = getattr(app, "tierguard_context", None)
        if ctx is None:
            return True, "alive (starting)"
        try:
            asyncio.run_coroutine_threadsafe(asyncio.sleep(0), ctx.runner.loop).result(LOOP_TIMEOUT_S)
        except Exception:
            return False, f"shadow-call event loop unresponsive for {LOOP_TIMEOUT_S:g} s"
        return True, "alive"

    def ready() -> tuple[bool, str]:
        ok, reason = live()
        if not ok:
            return ok, reason
        try:
            if "redis" not in client:
                client["redis"] = redis_lib.Redis.from_url(settings.redis_url, socket_timeout=2,
                                                           socket_connect_timeout=2)
            client["redis"].ping()
        except redis_lib.RedisError as err:
            return False, f"broker {mask_url(settings.redis_url)} unreachable: {type(err).__name__}"
        return True, "ready"

    return {"/livez": live, "/readyz": ready}
