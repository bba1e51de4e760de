"""Fewer writes to the caller: a response's head and its first body bytes go out in one.

uvicorn writes a response's head as soon as the app sends ``http.response.start`` and each
body message as it comes: two system calls (and two reads for the caller) for an answer
that could be one. :class:`OneWriteProtocol` (on top of
:class:`~tierguard.app.admission.GuardedProtocol`; under
:class:`~tierguard.app.express.ExpressProtocol`, what ``tierguard gateway`` serves) gives each
request's cycle a :class:`HeadHolder` in place of the connection's transport: it holds the head
until the next write (then one write for both) or until the event loop's next turn, so a
streamed answer's head never waits for its first event.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE

from tierguard.app.admission import GuardedProtocol

# uvicorn words the status lines of 100–599 only (past them its cycle raised KeyError: an error logged,
# the connection closed, no answer): an upstream's status of 600–999 is written as sent, as the express
# lane writes it (one of 000–099 never gets here: the upstream clients refuse it, a 502).
STATUS_LINE.update({code: b"HTTP/1.1 %d \r\n" % code for code in range(600, 1000)})


class HeadHolder:
    """A transport that holds its first write (a response head) for one turn of the loop."""

    __slots__ = ("transport", "held", "first", "loop")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop):
        self.transport = transport
        self.loop = loop
        self.held: bytes | None = None
        self.first = True

    def write(self, data: bytes) -> None:
        if self.first:
            self.first = False
            self.held = data
            self.loop.call_soon(self.flush)
            return
        held = self.held
        if held is not None:
            self.held = None
            data = held + data
        self.transport.write(data)

    def flush(self) -> None:
        held = self.held
        if held is not None:
            self.held = None
            if not self.transport.is_closing():
                self.transport.write(held)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class OneWriteProtocol(GuardedProtocol):
    """The door's checks, and one write for a head and its first bytes (each request's cycle dressed)."""

    def dress(self, cycle: Any) -> None:
        super().dress(cycle)
        if cycle is not None and cycle.transport is self.transport:  # a cycle was made for this request
            cycle.transport = HeadHolder(self.transport, self.loop)  # type: ignore[assignment]
