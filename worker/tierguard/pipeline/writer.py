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


class Writer:
    def __init__(self, engine: Engine, r: redis_lib.Redis | None, policy: Policy,
                 max_results: int = 500, max_wait: float = 0.02):
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
        """Queue results for the writer and wait until they are committed."""
        self._started()
        futures: list[Future[Outcome]] = []
        for result in results:
            future: Future[Outcome] = Future()
            self.queue.put((result, future))
            futures.append(future)
        return [f.result() for f in futures]

    def _collect(self) -> list[tuple[Result, Future]]:
        items = [self.queue.get()]
        deadline = time.monotonic() + self.max_wait
        while len(items) < self.max_results:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                items.append(self.queue.get(timeout=remaining))
            except queue.Empty:
                break
        return items

    def _write(self, items: list[tuple[Result, Future]]) -> None:
        try:
            outcomes = record_many(self.engine, self.redis, self.policy, [r for r, _ in items])
        except sa.exc.OperationalError as err:  # database down: every job retries later
            for _, future in items:
                future.set_exception(err)
            return
        except Exception:
            if len(items) == 1:
                raise
            log.exception("a transaction of %d results failed; recording them one by one", len(items))
            for item in items:
                try:
                    self._write([item])
                except Exception as err:
                    item[1].set_exception(err)
            return
        for (_, future), outcome in zip(items, outcomes, strict=True):
            future.set_result(outcome)

    def _run(self) -> None:
        while True:
            items = self._collect()
            try:
                self._write(items)
            except Exception as err:
                for _, future in items:
                    if not future.done():
                        future.set_exception(err)
