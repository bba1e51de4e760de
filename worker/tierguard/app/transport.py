"""The SDK wrapper's HTTP clients: the SDK's own ``httpx2`` client, with a :class:`~tierguard.app.tap.Tap`.

A :class:`WatchingClient` is what the wrapped SDK client sends through (passed to it as
its public ``http_client``): it hands each request to the tap, sends it with the
client it wraps (the caller's own, with its proxies, limits and TLS), and, for a
request the tap watches, reads the answer through a byte stream that passes every
chunk on to the caller as it comes and to the tap beside it (asked for uncompressed) (an answer the SDK asked
to be read whole is handed to the tap once read). An answer its category checks
(:mod:`~tierguard.app.escalation`: read whole, a stream only with ``buffer_streams``) that fails
is replaced by the answer of the same request to ``escalate_to``, sent once more here. Everything
else — building requests, timeouts, closing — is the wrapped client's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from time import perf_counter
from typing import Any

import httpx2

from tierguard.app.tap import MARKED, Call, Tap


class _Unused(httpx2.BaseTransport, httpx2.AsyncBaseTransport):
    """The transport of the outer client, never used: requests go through the wrapped client."""

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        raise RuntimeError("tierguard's client sends through the client it wraps")

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        raise RuntimeError("tierguard's client sends through the client it wraps")


def _uncompressed(request: httpx2.Request) -> None:
    """A watched answer read as it comes is asked for uncompressed (the tap reads its raw bytes), as
    the gateway asks; not a SigV4-signed request, whose signature covers its headers."""
    if not request.headers.get("authorization", "").startswith("AWS4-"):
        request.headers["accept-encoding"] = "identity"


class _Teed(httpx2.SyncByteStream):
    def __init__(self, inner: Any, call: Call):
        self._inner, self._call = inner, call

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._inner:
            self._call.feed(chunk)
            yield chunk
        self._call.ended()

    def close(self) -> None:
        self._inner.close()

    @property
    def elapsed(self) -> Any:
        return getattr(self._inner, "elapsed", None)


class _AsyncTeed(httpx2.AsyncByteStream):
    def __init__(self, inner: Any, call: Call):
        self._inner, self._call = inner, call

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunks = self._inner.__aiter__()
        try:
            async for chunk in chunks:
                self._call.feed(chunk)
                yield chunk
            self._call.ended()
        finally:  # also when the caller stops early: closed here, not by the event loop later
            if hasattr(chunks, "aclose"):
                await chunks.aclose()

    async def aclose(self) -> None:
        await self._inner.aclose()

    @property
    def elapsed(self) -> Any:
        return getattr(self._inner, "elapsed", None)


def _sse(response: httpx2.Response) -> bool:
    return response.headers.get("content-type", "").startswith("text/event-stream")


def _watched(call: Call, response: httpx2.Response, stream: bool, asynchronous: bool = False) -> None:
    """Hand ``response`` to ``call``: read whole already, or teed as the caller reads it."""
    if not stream:
        call.whole(response.content)
        return
    call.streaming(response)
    response.stream = (_AsyncTeed if asynchronous else _Teed)(response.stream, call)  # type: ignore[assignment]


class _Delegating:
    """What the outer client takes from the one it wraps: building requests, timeouts, state."""

    inner: Any

    def build_request(self, *args: Any, **kwargs: Any) -> httpx2.Request:
        return self.inner.build_request(*args, **kwargs)

    @property
    def timeout(self) -> httpx2.Timeout:
        return self.inner.timeout

    @timeout.setter
    def timeout(self, value: Any) -> None:
        pass  # the outer client's own (set while it is built) is never used

    @property
    def is_closed(self) -> bool:
        return self.inner.is_closed


class WatchingClient(_Delegating, httpx2.Client):
    """An ``httpx2.Client`` that sends through ``inner`` and lets ``tap`` see what names a category."""

    def __init__(self, inner: httpx2.Client, tap: Tap):
        super().__init__(transport=_Unused(), trust_env=False)
        self.inner, self.tap, self.core = inner, tap, tap.core
        self.build_request = inner.build_request  # type: ignore[method-assign]  (no frame of ours)

    def send(self, request: httpx2.Request, *, stream: bool = False, **kwargs: Any) -> httpx2.Response:
        mark = MARKED.get()
        if mark is not None and mark.quick and not stream and mark.core is self.core \
                and request.method == "POST":  # most calls: see Tap.answered_whole
            started = perf_counter()
            response = self.inner.send(request, **kwargs) if kwargs else self.inner.send(request)
            failed = self.tap.answered_whole(mark, request, response, started)
            return response if failed is None else self._again(*failed, response, False, kwargs)
        request, call = self.tap.begin(request)
        if call is None:
            return self.inner.send(request, stream=stream, **kwargs)
        if stream:
            _uncompressed(request)
        elif call.rate is not None:  # marked, its header stripped: read whole, nothing to check
            response = self.inner.send(request, stream=stream, **kwargs)
            self.tap.answered_whole(mark, request, response, call.started)  # type: ignore[arg-type]
            return response
        response = self.inner.send(request, stream=stream, **kwargs)
        if not call.answered(response):
            return response
        if call.to is not None and call.checked(_sse(response)):
            if stream:
                response.read()
            return self._checked(request, call, response, stream, kwargs)
        _watched(call, response, stream)
        return response

    def _checked(self, request: httpx2.Request, call: Call, response: httpx2.Response, stream: bool,
                 kwargs: dict[str, Any]) -> httpx2.Response:
        """The answer read whole and checked: itself, or the escalated call's when it fails."""
        return self._again(call, call.escalation(request, response.content, _sse(response)), response,
                           stream, kwargs)

    def _again(self, call: Call, again: httpx2.Request | None, response: httpx2.Response, stream: bool,
               kwargs: dict[str, Any]) -> httpx2.Response:
        """``again`` (a checked answer failed; None: nothing to send) sent once more: the caller gets
        its answer if it comes, else ``response``."""
        if again is not None:
            try:
                other = self.inner.send(again, stream=stream, **kwargs)
            except Exception:
                other = None
            if other is not None and call.escalated(other):
                response.close()
                _watched(call, other, stream)
                return other
            if other is None:
                call.escalated(None)
            else:
                other.close()
        call.replay(response.content, _sse(response))
        return response

    def close(self) -> None:
        self.inner.close()


class AsyncWatchingClient(_Delegating, httpx2.AsyncClient):
    """:class:`WatchingClient` for the SDK's async clients."""

    def __init__(self, inner: httpx2.AsyncClient, tap: Tap):
        super().__init__(transport=_Unused(), trust_env=False)
        self.inner, self.tap, self.core = inner, tap, tap.core
        self.build_request = inner.build_request  # type: ignore[method-assign]  (no frame of ours)

    async def send(self, request: httpx2.Request, *, stream: bool = False,
                   **kwargs: Any) -> httpx2.Response:
        mark = MARKED.get()
        if mark is not None and mark.quick and not stream and mark.core is self.core \
                and request.method == "POST":  # most calls: see Tap.answered_whole
            started = perf_counter()
            response = await (self.inner.send(request, **kwargs) if kwargs else self.inner.send(request))
            failed = self.tap.answered_whole(mark, request, response, started)
            return response if failed is None else await self._again(*failed, response, False, kwargs)
        request, call = self.tap.begin(request)
        if call is None:
            return await self.inner.send(request, stream=stream, **kwargs)
        if stream:
            _uncompressed(request)
        elif call.rate is not None:  # marked, its header stripped: read whole, nothing to check
            response = await self.inner.send(request, stream=stream, **kwargs)
            self.tap.answered_whole(mark, request, response, call.started)  # type: ignore[arg-type]
            return response
        response = await self.inner.send(request, stream=stream, **kwargs)
        if not call.answered(response):
            return response
        if call.to is not None and call.checked(_sse(response)):
            if stream:
                await response.aread()
            return await self._checked(request, call, response, stream, kwargs)
        _watched(call, response, stream, asynchronous=True)
        return response

    async def _checked(self, request: httpx2.Request, call: Call, response: httpx2.Response,
                       stream: bool, kwargs: dict[str, Any]) -> httpx2.Response:
        return await self._again(call, call.escalation(request, response.content, _sse(response)),
                                 response, stream, kwargs)

    async def _again(self, call: Call, again: httpx2.Request | None, response: httpx2.Response,
                     stream: bool, kwargs: dict[str, Any]) -> httpx2.Response:
        if again is not None:
            try:
                other = await self.inner.send(again, stream=stream, **kwargs)
            except Exception:
                other = None
            if other is not None and call.escalated(other):
                await response.aclose()
                _watched(call, other, stream, asynchronous=True)
                return other
            if other is None:
                call.escalated(None)
            else:
                await other.aclose()
        call.replay(response.content, _sse(response))
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()
