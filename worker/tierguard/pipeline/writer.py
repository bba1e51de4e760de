"""The per-process database writer: many worker threads, one transaction for many results.

A worker thread hands its finished jobs to :meth:`Writer.record_all` and
waits until the transaction holding them has committed, so a Celery job is still
acknowledged only after its sample is stored. One writer thread collects up to
``max_results`` results or ``max_wait`` seconds and calls
:func:`~tierguard.pipeline.recorder.record_many`. If a transaction fails for anything but a
database outage, its results are retried one by one, so one bad result cannot
hold the others back. The thread starts on first use, and again in a forked child.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from concurrent.futures import Future

import redis as redis_lib
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tierguard.pipeline.recorder import record_many
from tierguard.pipeline.results import Outcome, Result
from tierguard.policy import Policy

log = logging.getLogger(__name__)


# A transaction costs about 6 ms of CPU whatever it holds (its session, the categories locked and
# updated, the commit): gathering a busy worker's messages for 0.1 s instead of 0.02 s makes it
# hold ~3-4 messages instead of ~1-2, for 0.08 s more before a message is acknowledged.
MAX_WAIT_S = 0.1


class Writer:
    def __init__(self, engine: Engine, r: redis_lib.Redis | None, policy: Policy,
                 max_results: int = 500, max_wait: float = MAX_WAIT_S):
        self.engine, self.redis, self.policy = engine, r, policy
        self.max_results, self.max_wait = max_results, max_wait
        self.queue: queue.Queue[tuple[Result, Future]] = queue.Queue()
        self._pid: int | None = None
        self._start_lock = threading.Lock()

    def _started(self) -> None:
        """The writer thread of this process, started once (a forked child starts its own)."""
        if self._pid == os.getpid():
            return
        with self._start_lock:
            if self._pid != os.getpid():
                self.queue = queue.Queue()  # a parent's queued items are the parent's to write
                threading.Thread(target=self._run, name="tierguard-writer", daemon=True).start()
                self._pid = os.getpid()

    def record_all(self, results: list[Result]) -> list[Outcome]:
        """Queue a message's results for the writer (one item) and wait until they are committed."""
        if not results:
            return []
        self._started()
        future: Future[list[Outcome]] = Future()
        self.queue.put((results, future))
        return future.result()

    def _collect(self) -> list[tuple[list[Result], Future]]:
        items = [self.queue.get()]
        count, deadline = len(items[0][0]), time.monotonic() + self.max_wait
        while count < self.max_results:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                items.append(self.queue.get(timeout=remaining))
            except queue.Empty:
                break
            count += len(items[-1][0])
        return items

    def _write(self, items: list[tuple[list[Result], Future]]) -> None:
        try:
            outcomes = record_many(self.engine, self.redis, self.policy, [r for rs, _ in items for r in rs])
        except sa.exc.OperationalError as err:  # database down: every job retries later
            for _, future in items:
                future.set_exception(err)
            return
        except Exception:
            if len(items) == 1 and len(items[0][0]) == 1:
                raise
            log.exception("a transaction of %d results failed; recording them one by one",
                          sum(len(rs) for rs, _ in items))
            for results, future in items:
                self._one_by_one(results, future)
            return
        at = 0
        for results, future in items:
            future.set_result(outcomes[at:at + len(results)])
            at += len(results)

    def _one_by_one(self, results: list[Result], future: Future) -> None:
        """A message's results each in a transaction of its own: every one that can be is recorded;
        the first failure is the message's (it runs again; the recorded ones are not called again)."""
        outcomes, failed = [], None
        for result in results:
            done: Future[list[Outcome]] = Future()
            try:
                self._write([([result], done)])
                outcomes += done.result()
            except Exception as err:
                failed = failed or err
        if failed is not None:
            future.set_exception(failed)
        else:
            future.set_result(outcomes)

    def _run(self) -> None:
        while True:
            items = self._collect()
            try:
                self._write(items)
            except Exception as err:
                for _, future in items:
                    if not future.done():
                        future.set_exception(err)
