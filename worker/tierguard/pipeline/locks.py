"""A Redis lock that lapses soon after its holder dies: short-lived, kept alive by a heartbeat.

``with held(r, name, ttl) as ok:`` takes the lock without waiting (``ok`` False: another
process holds it) and, while the block runs, a daemon thread extends it every ``ttl / 3``
seconds. A holder killed outright stops extending: the lock is free ``ttl`` seconds later,
not after the longest cycle anyone could imagine.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
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
def held(r: redis_lib.Redis, name: str, ttl: float = 30.0) -> Iterator[Holding]:
    lock = r.lock(name, timeout=ttl, blocking=False, thread_local=False)  # the heartbeat extends it
    if not lock.acquire():
        yield Holding()
        return
    done = threading.Event()

    def beat() -> None:
        while not done.wait(ttl / 3):
            try:
                lock.reacquire()
            except redis_lib.RedisError as err:  # lost it (expired, or Redis away): say so, go on
                log.warning("lock %s not extended: %s", name, err)

    heart = threading.Thread(target=beat, name="tierguard-lock-heartbeat", daemon=True)
    heart.start()
    try:
        yield Holding(lock)
    finally:
        done.set()
        heart.join(1)
        try:
            lock.release()
        except redis_lib.RedisError as err:  # expired or Redis gone: it lapses by itself
            log.info("lock %s not released (%s): it lapses by itself", name, err)
