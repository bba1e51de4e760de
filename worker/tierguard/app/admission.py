"""The gateway's door: how long a caller may take to send its request head, how many callers
one process holds, and the open-file limit they must fit in.

uvicorn reads a request head with no time limit (its keep-alive timer runs only between
requests) and takes every connection the kernel hands it. :class:`GuardedProtocol` is
uvicorn's httptools protocol with two checks added, served by ``tierguard gateway``
(``http=`` in ``uvicorn.run``):

- a timer started when the connection is made (and again at the first byte of each next
  request on a kept-alive connection), cancelled when the head is complete: a caller that
  has not sent its request line and headers within ``TIERGUARD_GATEWAY_HEADER_TIMEOUT``
  seconds is disconnected (``header_timeout``);
- a count of the process's caller connections. At ``TIERGUARD_GATEWAY_MAX_CLIENTS``, a new
  connection takes the place of the one that has waited longest for a request head — a
  caller still sending its first head, or a kept-alive connection between requests — if
  that one has waited ``EVICT_AFTER`` seconds or more: it is closed (``evicted_idle``), as
  a server closes an idle kept-alive connection. With no such connection, the new one has
  ``OVER_CAP_WAIT`` seconds to send its request head; when it does, it takes the place of the
  one that has waited longest for a head, however briefly (a whole head beats one still
  awaited). Slow callers holding every place, however often they reconnect, therefore never
  lock out a caller that sends its request at once. When every place holds a request in
  progress, the new one is answered with an Anthropic-shaped 503 and closed
  (``too_many_clients``; also counted when it sends no head in time).

A response the gateway must cut short after its headers (a deadline passed) can close the
connection under it through the scope's ``ABORT`` extension, without uvicorn logging an error;
the ``LEFT`` extension gives the connection's future that is done when the caller leaves (one
per connection, instead of a task per request waiting on ``receive`` for the disconnect).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections import Counter
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from tierguard.config import Settings, get_settings

log = logging.getLogger(__name__)

OVER_CAP_WAIT = 0.5  # seconds a connection past the cap may take to send the head its 503 answers
EVICT_AFTER = 0.1  # seconds a connection must have waited for a request head before it gives way
DRAIN_MAX = 64 * 1024  # bytes of a refused request read before its 503 (closing on unread data resets)
ABORT = "tierguard.abort"  # scope["extensions"][ABORT](): close this request's connection now
LEFT = "tierguard.left"  # scope["extensions"][LEFT](): a future done when the caller's connection is lost
FD_MARGIN = 64  # open files a gateway process needs besides its callers and upstream connections


def error_body(message: str, kind: str = "api_error") -> bytes:
    """An error as the Messages API words it."""
    return json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()


class Door:
    """One process's caller connections: how many are open, and the refusals at the door."""

    def __init__(self, header_timeout: float, max_clients: int):
        self.header_timeout = header_timeout
        self.max_clients = max_clients
        self.open = 0
        self.waiting: dict[GuardedProtocol, float] = {}  # no request in progress: since when, oldest first
        self.counts: Counter[str] = Counter()
        self._logged: set[str] = set()

    def refuse(self, kind: str, why: str, *args: Any) -> None:
        """Count a refusal; the first of each kind is logged, the rest only counted."""
        self.counts[kind] += 1
        if kind not in self._logged:
            self._logged.add(kind)
            log.warning(why + " (counted as %s; later ones are only counted)", *args, kind)

    def make_room(self, now: float, any_age: bool = False) -> bool:
        """Close the connection that has waited longest for a request head, if it has waited
        ``EVICT_AFTER`` or more (``any_age``: however long); whether one was closed."""
        oldest = next(iter(self.waiting.items()), None)
        if oldest is None or (not any_age and now - oldest[1] < EVICT_AFTER):
            return False
        del self.waiting[oldest[0]]
        oldest[0].evict()
        self.refuse("evicted_idle", "TIERGUARD_GATEWAY_MAX_CLIENTS (%d) reached: the caller connection "
                    "that had waited longest for a request head was closed for a new one",
                    self.max_clients)
        return True

    async def over_capacity(self, scope: dict, receive: Any, send: Any) -> None:
        """The ASGI app a connection past the cap is served: a 503 the SDKs retry, then close. A small
        body is read first: closing a socket with unread data resets it, and the 503 would be lost."""
        try:
            async with asyncio.timeout(OVER_CAP_WAIT):
                size = 0
                while size <= DRAIN_MAX:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    size += len(message.get("body", b""))
                    if not message.get("more_body"):
                        break
        except TimeoutError:
            pass
        body = error_body(f"the gateway holds {self.max_clients} connections already "
                          f"(TIERGUARD_GATEWAY_MAX_CLIENTS); retry shortly", "overloaded_error")
        await send({"type": "http.response.start", "status": 503,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"retry-after", b"1"), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


_door: dict[str, Door] = {}


def configure(settings: Settings) -> Door:
    """This process's door, from ``settings`` (the gateway's, when it is built)."""
    door = _door.get("door")
    if door is None:
        door = _door["door"] = Door(settings.gateway_header_timeout, settings.gateway_max_clients)
    else:
        door.header_timeout, door.max_clients = settings.gateway_header_timeout, settings.gateway_max_clients
    return door


def current() -> Door:
    """This process's door (from the environment when no gateway has configured it)."""
    return _door.get("door") or configure(get_settings())


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a request-head timeout and a cap on connections."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.door = current()
        self.head_timer: asyncio.TimerHandle | None = None
        self.head_from: float | None = None  # when a request head began that has no timer yet
        self.counted = False
        self.gone: asyncio.Future | None = None  # done when the connection is lost (see leaving)
        self.running: Any = None  # the cycle that last asked (see leaving)
        self.over: Any = None  # past the cap at connecting: the app it is served if admitted

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        door = self.door
        door.open += 1
        self.counted = True
        wait, now = door.header_timeout, self.loop.time()
        if door.open > door.max_clients and not door.make_room(now):
            self.over, self.app = self.app, door.over_capacity  # 503 once its head is in, unless
            wait = min(wait, OVER_CAP_WAIT)  # a place is made then (on_headers_complete)
        else:
            door.waiting[self] = now
        self.head_timer = self.loop.call_later(wait, self.head_timed_out)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.head_timer is None:  # the next request on a kept-alive connection has begun: timed
            self.head_from = self.loop.time()  # once data_received ends without its whole head

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.head_from is not None and self.head_timer is None and not self.transport.is_closing():
            self.head_timer = self.loop.call_at(self.head_from + self.door.header_timeout,
                                                self.head_timed_out)

    def on_headers_complete(self) -> None:
        self.stop_timer()
        door = self.door
        door.waiting.pop(self, None)
        if self.over is not None:  # a whole head beats one still awaited, however long it waited
            if door.make_room(self.loop.time(), any_age=True):
                self.app = self.over
            else:
                self._refused()
            self.over = None
        super().on_headers_complete()
        self.dress(self.cycle)

    def dress(self, cycle: Any) -> None:
        """A request's cycle made: its scope's extensions (the caller's leaving, aborting)."""
        if cycle is None:  # (no cycle made: an upgrade uvicorn answers itself)
            return
        extensions = cycle.scope.setdefault("extensions", {})
        extensions[ABORT] = functools.partial(self.abort, cycle)
        extensions[LEFT] = functools.partial(self.leaving, cycle)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.cycle.response_complete:  # none pipelined
            self.door.waiting[self] = self.loop.time()  # kept alive: waiting for the next head

    def leaving(self, cycle: Any) -> asyncio.Future:
        """A future done when the caller's connection is lost, for ``cycle``'s request; reading is
        resumed (as uvicorn's ``receive`` does) so that a caller who leaves is seen even while a next
        request waits (uvicorn then marks only that next one disconnected: this one is marked too)."""
        self.running = cycle
        if self.gone is None:
            self.gone = self.loop.create_future()
            if self.transport.is_closing() or cycle.disconnected:
                self.gone.set_result(None)
        if not self.gone.done():
            self.flow.resume_reading()
        return self.gone

    def _refused(self) -> None:
        self.door.refuse("too_many_clients", "a caller connection beyond TIERGUARD_GATEWAY_MAX_CLIENTS "
                         "(%d) was answered 503 (or closed, its head not sent in time)",
                         self.door.max_clients)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.over is not None:  # past the cap, gone before its head
            self.over = None
            self._refused()
        if self.running is not None and not self.running.response_complete:
            self.running.disconnected = True  # (no 500 written for it on the closed connection)
        if self.gone is not None and not self.gone.done():
            self.gone.set_result(None)
        self.stop_timer()
        self.door.waiting.pop(self, None)
        if self.counted:
            self.counted = False
            self.door.open -= 1
        super().connection_lost(exc)

    def stop_timer(self) -> None:
        self.head_from = None
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def evict(self) -> None:
        self.stop_timer()
        self.transport.close()

    def head_timed_out(self) -> None:
        self.head_timer = None
        self.door.waiting.pop(self, None)
        if self.app == self.door.over_capacity:  # past the cap: refused (too_many_clients)
            self.transport.close()
        elif not self.transport.is_closing():
            self.door.refuse("header_timeout", "a caller that had not sent its request head within "
                             "TIERGUARD_GATEWAY_HEADER_TIMEOUT (%g s) was disconnected",
                             self.door.header_timeout)
            self.transport.close()

    def abort(self, cycle: Any) -> None:
        """Close the connection under a response that cannot end as announced (the caller sees a
        short read); uvicorn takes it as a caller that left."""
        cycle.disconnected = True
        cycle.keep_alive = False
        self.transport.close()


def raise_fd_limit(needed: int) -> int:
    """Raise this process's soft limit on open files to its hard limit; the soft limit now.
    Warns when ``needed`` (callers + upstream connections + a margin) is above it."""
    try:
        import resource
    except ImportError:  # not a POSIX system: nothing to raise
        return needed
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        target = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as err:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, target, err)
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning("the open-file limit (%d) is below the %d this gateway process may need "
                    "(TIERGUARD_GATEWAY_MAX_CLIENTS + TIERGUARD_GATEWAY_MAX_CONNECTIONS + %d): "
                    "raise it (ulimit -n) or lower those", soft, needed, FD_MARGIN)
    return soft
