"""A Redis lock that lapses soon after its holder dies: short-lived, kept alive by a heartbeat.

``with held(r, name, ttl) as ok:`` takes the lock without waiting (``ok`` False: another
process holds it) and, while the block runs, a daemon thread extends it every ``ttl / 3``
seconds. A holder killed outright stops extending: the lock is free ``ttl`` seconds later,
not after the longest cycle anyone could imagine.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import redis as redis_lib

log = logging.getLogger(__name__)


class Holding:
    """Truthy when the lock was taken; :meth:`still` says whether it is still this holder's (a
    heartbeat that failed for a whole TTL lets another worker take it)."""

    def __init__(self, lock: Any = None):
        self._lock = lock

    def __bool__(self) -> bool:
        return self._lock is not None

    def still(self) -> bool:
        try:
            return self._lock is not None and bool(self._lock.owned())
        except redis_lib.RedisError:
            return False


@contextmanager
def heartbeat(extend: Callable[[], Any], every: float, what: str) -> Iterator[None]:
    """Call ``extend`` every ``every`` seconds on a daemon thread while the block runs (what a
    holder does to keep a short-lived key alive); a failure is logged, never raised."""
    done = threading.Event()

    def beat() -> None:
        while not done.wait(every):
            try:
                extend()
            except Exception as err:  # lost (expired, or Redis away): say so, go on (never dies)
                log.warning("%s not extended: %s", what, type(err).__name__)

    heart = threading.Thread(target=beat, name="tierguard-heartbeat", daemon=True)
    heart.start()
    try:
        yield
    finally:
        done.set()
        heart.join(1)


@contextmanager
def held(r: redis_lib.Redis, name: str, ttl: float = 30.0) -> Iterator[Holding]:
    lock = r.lock(name, timeout=ttl, blocking=False, thread_local=False)  # the heartbeat extends it
    if not lock.acquire():
        yield Holding()
        return
    try:
        with heartbeat(lock.reacquire, ttl / 3, f"lock {name}"):
            yield Holding(lock)
    finally:
        try:
            lock.release()
        except redis_lib.RedisError as err:  # expired or Redis gone: it lapses by itself
            log.info("lock %s not released (%s): it lapses by itself", name, err)
