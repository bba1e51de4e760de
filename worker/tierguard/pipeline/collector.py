"""The worker's garbage collector, tuned for many short-lived objects in flight.

A worker holds hundreds of shadow calls in flight, each made of thousands of objects
(requests, coroutines, answers, rows) that live as long as the call, a second or more.
With Python's default thresholds (700, 10, 10) most of them outlive two young
collections and reach the oldest generation, whose full collections then walk the whole
heap again and again: in ``tierguard bench pipeline`` 27 full collections took 10.8 s
of a worker's 43 s of CPU. So ``tierguard worker`` raises the young threshold
(``TIERGUARD_WORKER_GC_THRESHOLD``, 50,000 allocations; 0 keeps Python's) with the older
generations collected after 20 and 100 of the younger ones (:func:`tune`), and once it is
ready freezes what start-up made — modules, types, its context, never garbage — so no
collection walks it again (:func:`settle`). A call's objects then mostly die before their
first collection; reference cycles are still collected, later.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)
OLDER = (20, 100)  # collections of the generation below before the next is collected


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
