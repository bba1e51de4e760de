"""The worker's garbage collector, tuned for many short-lived objects in flight.

A worker holds hundreds of shadow calls in flight, each made of thousands of objects
(requests, coroutines, answers, rows) that live as long as the call, a second or more.
With Python's default thresholds (700, 10, 10) most of them outlive two young
collections and reach the oldest generation, whose full collections then walk the whole
heap again and again: in ``tierguard bench pipeline`` 27 full collections took 10.8 s
of a worker's 43 s of CPU. So ``tierguard worker`` raises the young threshold
(``TIERGUARD_WORKER_GC_THRESHOLD``, 50,000 allocations; the older generations still
after 10 younger collections each, as Python's) and, once it is ready (a prefork pool's
child: once it starts), freezes what start-up made — modules, types, its context, never
garbage — so no collection walks it again (:func:`install`). A call's objects then mostly
die before their first collection; reference cycles are still collected, later. 0 leaves
Python's collector as it is. (Python 3.14's incremental collector reads the older
thresholds differently; the image runs 3.11.)
"""

from __future__ import annotations

import gc
import logging
from typing import Any

log = logging.getLogger(__name__)
OLDER = (10, 10)  # collections of the generation below before the next is collected (Python's)


def tune(threshold: int) -> tuple[int, int, int]:
    """Set the young generation's ``threshold`` (0: Python's own kept); the thresholds now."""
    if threshold:
        gc.set_threshold(threshold, *OLDER)
    return gc.get_threshold()


def settle() -> int:
    """Collect once and freeze every object left (start-up's); how many are frozen."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("garbage collector: thresholds %s, %d start-up objects frozen", gc.get_threshold(), frozen)
    return frozen


def install(threshold: int) -> None:
    """``tierguard worker``'s collector: ``threshold`` set now (a prefork pool's children inherit it),
    start-up frozen when the worker is ready and when a prefork child starts; 0: nothing changed."""
    if not threshold:
        return
    from celery.signals import worker_process_init, worker_ready

    tune(threshold)
    worker_ready.connect(_settled, weak=False)  # (connected after the context's builder: runs after it)
    worker_process_init.connect(_settled, weak=False)


def _settled(**_: Any) -> None:
    settle()
