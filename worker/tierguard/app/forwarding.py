"""The gateway's forwarding: one request sent upstream and its answer relayed to the caller within
the gateway's deadline (``TIERGUARD_GATEWAY_DEADLINE``).

:class:`Forwarding` is the half of :class:`~tierguard.app.gateway.Gateway` that talks to the
upstream: before the answer's headers, a caller that leaves cancels the upstream request
(``caller_left``) and a passed deadline is a 504; after them the body is relayed as it comes
(:func:`~tierguard.app.relay.pump`) and cut the way the caller can tell (see
:mod:`~tierguard.app.relay`). An unreachable upstream is a 502, a read timeout a 504.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx2

from tierguard.app.admission import LEFT, error_body
from tierguard.app.deadline import Deadline
from tierguard.app.relay import (
    HOP_BY_HOP,
    UNANSWERED,
    Watch,
    cutter,
    disconnected,
    late,
    pump,
    respond,
    unreachable,
)


class CallerGone(Exception):
    """The caller left while the request was sent or its answer relayed."""


class Leaving:
    """The caller's leaving (``future``: done when it disconnects), cancelling the waiting task while
    :meth:`watching`: the upstream request and the relay run in the request's own task, with no task
    and no ``asyncio.wait`` of their own."""

    __slots__ = ("future", "task", "armed", "fired", "own")

    def __init__(self, future: asyncio.Future, own: bool = True):
        self.future, self.own = future, own  # own: made for this request (else the connection's)
        self.task = asyncio.current_task()
        self.armed = self.fired = False
        future.add_done_callback(self._left)

    @classmethod
    def of(cls, scope: dict, receive: Any) -> Leaving:
        """The caller's leaving: the connection's future where the server gives one
        (:data:`~tierguard.app.admission.LEFT`), else a task waiting for ``http.disconnect``."""
        leaving = (scope.get("extensions") or {}).get(LEFT)
        if leaving is not None:
            return cls(leaving(), own=False)
        return cls(asyncio.ensure_future(disconnected(receive)))

    def close(self) -> None:
        """The request is over: its own future cancelled, or the connection's left alone."""
        if self.own:
            self.future.cancel()
        else:
            self.future.remove_done_callback(self._left)

    def _left(self, _: asyncio.Future) -> None:
        if self.armed and not self.fired:
            self.fired = True
            self.task.cancel()  # type: ignore[union-attr]

    def watching(self) -> Leaving:
        """While in the block, the caller leaving cancels it: CallerGone (any other cancel goes on);
        CallerGone at once if it has left already."""
        return self

    def __enter__(self) -> None:
        if self.future.done():
            raise CallerGone
        self.armed = True

    def __exit__(self, kind: Any, err: Any, tb: Any) -> None:
        self.armed = False
        if self.fired and kind is not None and issubclass(kind, asyncio.CancelledError) \
                and self.task.uncancel() <= 0:  # type: ignore[union-attr]
            raise CallerGone from None


class Forwarding:
    """Sending to the upstream and relaying its answer; mixed into the gateway (which holds
    ``settings``, ``core`` and ``upstream``)."""

    settings: Any
    core: Any
    upstream: Any

    async def _relay(self, scope: dict, method: str, target: str, headers: list, body: bytes,
                     receive: Any, send: Any, watch: Watch | None = None) -> bool:
        """Forward one request and relay its response within the deadline; False unless the whole
        response reached the caller."""
        until = asyncio.get_running_loop().time() + self.settings.gateway_deadline
        left = Leaving.of(scope, receive)
        try:
            sent = await self._response_head(method, target, headers, body, send, left, until)
            if sent is None:
                return False
            response, shard = sent
            try:
                return await self._response_body(scope, response, send, watch, left, until)
            finally:
                await response.aclose()
                self.upstream.done(shard)  # type: ignore[union-attr]
        finally:
            left.close()

    async def _response_head(self, method: str, target: str, headers: list, body: bytes, send: Any,
                             left: Leaving, until: float) -> tuple[httpx2.Response, int] | None:
        """The upstream's response, its body still to read; None if the caller was answered already
        (502, 504) or left first (the upstream request is then cancelled: its connection closed)."""
        upstream = self.upstream
        assert upstream is not None
        try:
            with left.watching():
                with Deadline(until):
                    return await upstream.send(method, target, headers, body)
        except TimeoutError:
            self.core.refuse("deadline_exceeded", "%s", self._late())  # type: ignore[union-attr]
            await respond(send, 504, error_body(self._late()))
        except httpx2.TimeoutException:
            await respond(send, 504, error_body(UNANSWERED))
        except httpx2.TransportError as err:
            await respond(send, 502, unreachable(upstream.base_url, err))
        except CallerGone:  # before any answer: the upstream request is cancelled, nothing shadowed
            self.core.left()  # type: ignore[union-attr]
        return None

    async def _response_body(self, scope: dict, response: httpx2.Response, send: Any,
                             watch: Watch | None, left: Leaving, until: float) -> bool:
        if watch is not None:
            watch.status = response.status_code
            watch.headers = response.headers
        head = [(k.lower(), v) for k, v in response.headers.raw if k.lower() not in HOP_BY_HOP]
        unsent = [{"type": "http.response.start", "status": response.status_code, "headers": head}]
        cut = cutter(scope, send, response)
        try:
            with left.watching():
                with Deadline(until):
                    return await pump(response, send, watch, cut, unsent)
        except TimeoutError:
            self.core.refuse("deadline_exceeded", "%s", self._late())  # type: ignore[union-attr]
            await (respond(send, 504, error_body(self._late())) if unsent else cut(self._late()))
        except CallerGone:
            self.core.left()  # type: ignore[union-attr]
        return False

    def _late(self) -> str:
        return late(self.settings.gateway_deadline)
