"""At the interpreter's exit, the shadow jobs a process still holds are sent first.

A publisher's thread is a daemon (it never keeps a process alive), so a script, a batch job or a
server worker that exits right after its calls would lose what it had not sent yet: up to
``TIERGUARD_PUBLISH_GATHER_S`` of sampled calls, and its traffic counters. As Sentry's SDK flushes
its transport at exit, every publisher whose thread runs in this process is closed here, all of
them within ``TIERGUARD_EXIT_FLUSH_S``; what is still unsent then is logged. A process that ends
with ``os._exit`` (``multiprocessing``'s forked children) runs no exit hooks: close the client first.
May import: nothing of tierguard's (publishers are handed in).
"""

from __future__ import annotations

import atexit
import logging
import time
import weakref
from typing import Any

log = logging.getLogger("tierguard")

_publishers: weakref.WeakSet[Any] = weakref.WeakSet()


def watch(publisher: Any) -> None:
    """Close ``publisher`` at exit (it has ``settings``, ``live()``, ``close(timeout)``, ``queue``)."""
    _publishers.add(publisher)


def _at_exit() -> None:
    live = [p for p in list(_publishers) if p.live()]
    if not live:
        return
    deadline = time.monotonic() + max(p.settings.exit_flush_s for p in live)
    for publisher in live:
        try:
            publisher.close(timeout=max(0.0, min(publisher.settings.exit_flush_s,
                                                 deadline - time.monotonic())))
            if left := publisher.queue.unfinished_tasks:
                log.warning("tierguard: %d shadow job(s) not sent before exit "
                            "(TIERGUARD_EXIT_FLUSH_S=%g)", left, publisher.settings.exit_flush_s)
        except Exception:  # never the end of the other exit hooks
            log.exception("tierguard: sending shadow jobs at exit failed")


atexit.register(_at_exit)
