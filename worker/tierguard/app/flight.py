"""One express call upstream (:mod:`~tierguard.app.express`): the lean client's response, driven by
its connection's parser callbacks instead of awaited.

A plain answer is read whole and written to the caller at once. A stream is relayed as it comes:
its head with its first bytes (or alone on the loop's next turn), each chunk as it arrives, framed
as uvicorn frames the ASGI path's (the upstream's ``content-length``, else chunked), its usage read
on the way (:class:`~tierguard.app.relay.Watch`); upstream reading pauses while the caller's
transport is full. One timer holds both limits: the deadline, and ``TIERGUARD_GATEWAY_TIMEOUT``
since the last bytes. What the ASGI path does at each end, this does too: before the answer's head
a 502 or 504; after it, a stream cut with an ``error`` event (an SSE stream) or the connection
closed; a caller who leaves closes the upstream connection; the same counts.
"""

from __future__ import annotations

from typing import Any

import httpx2

from tierguard.app import lean_client
from tierguard.app.admission import error_body
from tierguard.app.relay import UNANSWERED, Watch, broke_off, error_event, is_sse, late, unreachable

JSON = [(b"content-type", b"application/json")]  # the head of the lane's own answers (errors)


class Flight(lean_client.Response):
    """One express call: ``protocol`` the caller's connection, ``plan`` its category's routing,
    ``cycle`` its request's."""

    def __init__(self, conn: Any, protocol: Any, lane: Any, plan: Any, streamed: bool, cycle: Any):
        super().__init__(conn, lane.settings.gateway_timeout)
        self.protocol, self.lane, self.plan = protocol, lane, plan
        self.cycle = cycle  # this call's (one pipelined behind it becomes the protocol's)
        self.over = False
        self.watch = Watch(True, True, lane.settings.stream_assembly_max) if streamed else None
        self.framing: bytes | None = None  # a relayed stream's: b"chunked", b"length" or b"none"
        self.sse = False
        self.held: bytes | None = None  # a stream's head, until its first bytes or the next turn
        self.loop = loop = conn.loop
        self.last = now = loop.time()
        self.until = now + lane.settings.gateway_deadline
        self.timer = loop.call_at(min(self.until, now + self.timeout), self.timed_out)

    # The connection's parser (lean_client.Connection) drives these.
    def on_headers_complete(self, status: int) -> None:
        super().on_headers_complete(status)
        if self.watch is not None and not self.over:
            self.watch.status, self.watch.headers = status, self.head
            head, self.framing = self.protocol.head(self.cycle, status, self.raw, None)
            self.sse = self.framing == b"chunked" and is_sse(self.head)
            self.held = head
            self.loop.call_soon(self._flush)

    def on_body(self, body: bytes) -> None:
        self.last = self.loop.time()
        if self.watch is None:
            self.chunks.append(body)  # read whole, never paused: no one reads it until it ends
        elif not self.over:
            self._write(b"%x\r\n%s\r\n" % (len(body), body) if self.framing == b"chunked" else body)
            self.watch.see(body)

    def _wake(self) -> None:
        if self.over or (self.error is None and not self.complete):
            return
        self._end(later=True)  # (still in the parser's callbacks: the connection is given back after)
        if self.error is not None:
            return self._broke(self.error)
        if self.watch is None:
            body = b"".join(self.chunks)
            self.protocol.answer(self.cycle, self.status_code, self.raw, body)
            return self.lane.counted(self.plan, self, body)
        self._write(b"0\r\n\r\n" if self.framing == b"chunked" else b"")
        self.protocol.finish(self.cycle)
        self.lane.counted(self.plan, self, None)

    # The caller's side.
    def _write(self, data: bytes) -> None:
        held, self.held = self.held, None
        if held is not None:
            data = held + data
        if data:
            self.protocol.write(self.cycle, data)

    def _flush(self) -> None:
        if self.held is not None and not self.over:
            self._write(b"")

    def _end(self, later: bool = False) -> None:
        """Over: the connection given back (kept alive if read to its end, else closed)."""
        self.over = True
        self.timer.cancel()
        if later:
            self.loop.call_soon(self.close)
        else:
            self.close()

    def _broke(self, err: Exception) -> None:
        """The upstream failed: before a relayed head, the ASGI path's 502 or 504; after, a cut."""
        if self.framing is not None:
            return self._cut(broke_off(err))
        if isinstance(err, httpx2.TimeoutException):
            self.protocol.answer(self.cycle, 504, JSON, error_body(UNANSWERED))
        else:
            self.protocol.answer(self.cycle, 502, JSON, unreachable(self.lane.base_url, err))
        self._head_counted()

    def _head_counted(self) -> None:
        """An answer that did not come whole: its head counted if it came, as the ASGI path counts
        it (a 429's pause, the rate-limit view; a stream what was watched)."""
        if self.head is not None:
            self.lane.counted(self.plan, self, None)

    def _cut(self, message: str) -> None:
        """End a relayed stream early: an SSE stream with an ``error`` event, else by closing."""
        if self.sse:
            event = error_event(message)
            self._write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(event), event))
            self.protocol.finish(self.cycle)
        else:
            self._write(b"")
            self.protocol.abort(self.cycle)
        self.lane.counted(self.plan, self, None)

    def timed_out(self) -> None:
        if self.over:
            return
        now = self.loop.time()
        if now < self.until and now < self.last + self.timeout:  # bytes came since it was set
            self.timer = self.loop.call_at(min(self.until, self.last + self.timeout), self.timed_out)
            return
        self._end()
        if now < self.until:
            return self._broke(httpx2.ReadTimeout(UNANSWERED))
        why = late(self.lane.settings.gateway_deadline)
        self.lane.core.refuse("deadline_exceeded", "%s", why)
        if self.framing is not None:
            return self._cut(why)
        self.protocol.answer(self.cycle, 504, JSON, error_body(why))
        self._head_counted()

    def caller_left(self) -> None:
        if not self.over:
            self._end()
            self.lane.core.left()
            self._head_counted()

    def pause(self, paused: bool) -> None:
        """The caller's transport is full (or has room again): stop (resume) reading upstream."""
        transport = self.conn.transport
        if self.watch is not None and not self.over and transport is not None and not self.conn.closed:
            self.paused = paused  # (a stream that ends paused: reading resumes when its connection is kept)
            (transport.pause_reading if paused else transport.resume_reading)()
