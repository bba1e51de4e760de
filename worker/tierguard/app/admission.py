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
- a count of the process's caller connections: past ``TIERGUARD_GATEWAY_MAX_CLIENTS``, a new
  connection is answered with an Anthropic-shaped 503 as soon as its head is in (its head
  timer shortened to ``OVER_CAP_WAIT``) and closed (``too_many_clients``).

A response the gateway must cut short after its headers (a deadline passed) can close the
connection under it through the scope's ``ABORT`` extension, without uvicorn logging an error.
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

OVER_CAP_WAIT = 1.0  # seconds a connection past the cap may take to send the head its 503 answers
ABORT = "tierguard.abort"  # scope["extensions"][ABORT](): close this request's connection now
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
        self.counts: Counter[str] = Counter()
        self._logged: set[str] = set()

    def refuse(self, kind: str, why: str, *args: Any) -> None:
        """Count a refusal; the first of each kind is logged, the rest only counted."""
        self.counts[kind] += 1
        if kind not in self._logged:
            self._logged.add(kind)
            log.warning(why + " (counted as %s; later ones are only counted)", *args, kind)

    async def over_capacity(self, scope: dict, receive: Any, send: Any) -> None:
        """The ASGI app a connection past the cap is served: a 503 the SDKs retry, then close."""
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
        self.counted = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        door = self.door
        door.open += 1
        self.counted = True
        wait = door.header_timeout
        if door.open > door.max_clients:
            self.app = door.over_capacity  # answered as soon as its head is in
            wait = min(wait, OVER_CAP_WAIT)
            door.refuse("too_many_clients", "a caller connection beyond TIERGUARD_GATEWAY_MAX_CLIENTS "
                        "(%d) was answered 503", door.max_clients)
        self.head_timer = self.loop.call_later(wait, self.head_timed_out)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.head_timer is None:  # the next request on a kept-alive connection has begun
            self.head_timer = self.loop.call_later(self.door.header_timeout, self.head_timed_out)

    def on_headers_complete(self) -> None:
        self.stop_timer()
        super().on_headers_complete()
        extensions = self.scope.setdefault("extensions", {})  # type: ignore[typeddict-item]
        extensions[ABORT] = functools.partial(self.abort, self.cycle)

    def connection_lost(self, exc: Exception | None) -> None:
        self.stop_timer()
        if self.counted:
            self.counted = False
            self.door.open -= 1
        super().connection_lost(exc)

    def stop_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def head_timed_out(self) -> None:
        self.head_timer = None
        if not self.transport.is_closing():
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
