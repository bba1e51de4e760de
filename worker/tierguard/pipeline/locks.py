"""A Redis lock that lapses soon after its holder dies: short-lived, kept alive by a heartbeat.

``with held(r, name, ttl) as ok:`` takes the lock without waiting (``ok`` False: another
process holds it) and, while the block runs, a daemon thread extends it every ``ttl / 3``
seconds. A holder killed outright stops extending: the lock is free ``ttl`` seconds later,
not after the longest cycle anyone could imagine.

Many short holders (each message's claims on its jobs) share one heartbeat thread per process
instead (:data:`BEATS`): a thread started and joined per message cost more than the claims.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
import weakref
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


class Beats:
    """One daemon thread calling every registered holder's ``extend`` every ``every`` seconds while
    its block runs (started on first use, and again in a forked child); a failure is logged,
    never raised."""

    def __init__(self) -> None:
        self._due: dict[int, tuple[float, float, Callable[[], Any], str]] = {}  # token -> next, every, …
        self._tokens = itertools.count()
        self._wake = threading.Condition()
        self._pid: int | None = None
        me = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: (beats := me()) and beats._forked())

    def _forked(self) -> None:
        """In a forked child: a new condition (a parent's thread may have held the old one's lock
        at the fork, and no thread here would ever release it) and no parent's holders."""
        self._wake, self._due, self._pid = threading.Condition(), {}, None

    @contextmanager
    def beating(self, extend: Callable[[], Any], every: float, what: str) -> Iterator[None]:
        token = next(self._tokens)
        with self._wake:
            if self._pid != os.getpid():  # this process's thread (a forked child starts its own)
                self._due = {}
                threading.Thread(target=self._run, name="tierguard-heartbeats", daemon=True).start()
                self._pid = os.getpid()
            self._due[token] = (time.monotonic() + every, every, extend, what)
            self._wake.notify()
        try:
            yield
        finally:
            with self._wake:
                self._due.pop(token, None)

    def _run(self) -> None:
        while True:
            with self._wake:
                now = time.monotonic()
                due = [(t, d) for t, d in self._due.items() if d[0] <= now]
                for token, (_, every, extend, what) in due:
                    self._due[token] = (now + every, every, extend, what)
                if not due:
                    soonest = min((d[0] for d in self._due.values()), default=now + 60.0)
                    self._wake.wait(max(0.0, soonest - now))
                    continue
            for _, (_, _, extend, what) in due:
                try:
                    extend()
                except Exception as err:  # lost (expired, or Redis away): say so, go on
                    log.warning("%s not extended: %s", what, type(err).__name__)


BEATS = Beats()


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
