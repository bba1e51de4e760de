"""``tierguard gateway``: Anthropic's API for any app, routed and shadowed by category.

A plain ASGI app (served by uvicorn). ``POST /v1/messages`` with the category
header gets its ``model`` from the category's route and is sampled through the
same :class:`~tierguard.app.core.Core` as the SDK wrapper; everything else
passes through unchanged. The caller's own credentials and headers go upstream;
the gateway stores none and logs none. Responses (status, headers other than
hop-by-hop ones, body) are relayed as they arrive, streams event by event;
a sampled streamed answer is assembled on the side and shadowed once it reaches
``message_stop``. A caller that leaves mid-stream cancels the upstream request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import httpx2

from tierguard.app.core import Core
from tierguard.app.stream import Assembler, SSEParser, UsageOnly
from tierguard.app.upstream import Upstream
from tierguard.config import Settings, get_settings, mask_url, upstream_url

log = logging.getLogger(__name__)

HOP_BY_HOP = {b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te",
              b"trailer", b"trailers", b"transfer-encoding", b"upgrade"}
_NOT_FORWARDED = HOP_BY_HOP | {b"host", b"content-length"}


def error_body(message: str, kind: str = "api_error") -> bytes:
    return json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()


class Gateway:
    """The ASGI app. ``core`` (policy, routes, publisher) is made at startup unless given."""

    def __init__(self, settings: Settings | None = None, core: Core | None = None):
        self.settings = settings or get_settings()
        self.core = core
        self.upstream: Upstream | None = None
        self.header = self.settings.category_header.lower().encode()

    async def startup(self) -> None:
        if self.core is None:
            self.core = await asyncio.to_thread(Core, self.settings)
        self.upstream = Upstream(upstream_url(self.settings), self.settings.gateway_max_connections,
                                 self.settings.gateway_timeout)

    async def shutdown(self) -> None:
        if self.upstream is not None:
            await self.upstream.aclose()
        if self.core is not None:
            await asyncio.to_thread(self.core.close)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return await self._lifespan(receive, send)
        if scope["type"] != "http":
            return None
        method, path = scope["method"], scope["path"]
        if method == "GET" and path in ("/healthz", "/readyz", "/tierguard/stats", "/metrics"):
            return await self._local(path, send)
        body = await _read_body(receive)
        headers, category = self._forwarded(scope["headers"])
        target = path + ("?" + scope["query_string"].decode("latin-1") if scope["query_string"] else "")
        core = self.core
        assert core is not None
        if method == "POST" and path == "/v1/messages":
            if category:
                return await self._messages(category, target, headers, body, receive, send)
            core.uncategorized()
        await self._relay(method, target, headers, body, receive, send)

    def _forwarded(self, raw: list[tuple[bytes, bytes]]) -> tuple[list[tuple[bytes, bytes]], str | None]:
        headers, category = [], None
        for name, value in raw:
            name = name.lower()
            if name == self.header:
                category = value.decode("latin-1").strip() or None
            elif name not in _NOT_FORWARDED:
                headers.append((name, value))
        return headers, category

    async def _messages(self, name: str, target: str, headers: list, body: bytes, receive: Any,
                        send: Any) -> None:
        core = self.core
        assert core is not None
        try:
            request = json.loads(body)
        except ValueError:
            request = None
        if not isinstance(request, dict):  # let the API say what is wrong with it
            core.uncategorized("unreadable_body")
            return await self._relay("POST", target, headers, body, receive, send)
        cat, routed = core.route(name, request)
        if cat is None:
            return await self._relay("POST", target, headers, body, receive, send)
        sampled = core.sampled(cat, routed)
        # Every answer is read on the side (its usage: production's tokens, measured; the whole
        # answer when sampled): ask for it uncompressed.
        headers = [h for h in headers if h[0] != b"accept-encoding"] + [(b"accept-encoding",
                                                                           b"identity")]
        started = time.perf_counter()
        watch = _Watch(routed.get("stream") is True, usage_only=not sampled)
        done = await self._relay("POST", target, headers, json.dumps(routed).encode(), receive, send,
                                 watch)
        if watch.status == 429:  # production is rate-limited on this model: its shadows wait
            core.rate_limited(routed.get("model"), watch.retry_after)
        core.saw_headers(routed.get("model"), watch.headers)
        if done and watch.status == 200:
            answer = watch.answer()
            if answer is not None:
                core.served(cat, routed, answer.get("usage"))
                if sampled:
                    core.submit(cat, routed, answer, started)

    async def _relay(self, method: str, target: str, headers: list, body: bytes, receive: Any,
                     send: Any, watch: _Watch | None = None) -> bool:
        """Forward one request and relay its response; False if the caller left before the end."""
        upstream = self.upstream
        assert upstream is not None
        try:
            response, shard = await upstream.send(method, target, headers, body)
        except httpx2.TimeoutException:
            await _respond(send, 504, error_body("the upstream API did not answer in time"))
            return False
        except httpx2.TransportError as err:
            log.warning("upstream %s unreachable: %s", mask_url(upstream.base_url), type(err).__name__)
            await _respond(send, 502, error_body(f"the gateway cannot reach the upstream API "
                                                 f"({type(err).__name__})"))
            return False
        try:
            if watch is not None:
                watch.status = response.status_code
                watch.headers = response.headers
                if response.status_code == 429:
                    watch.retry_after = response.headers.get("retry-after")
            await send({"type": "http.response.start", "status": response.status_code,
                        "headers": [(k.lower(), v) for k, v in response.headers.raw
                                    if k.lower() not in HOP_BY_HOP]})
            pump = asyncio.ensure_future(_pump(response, send, watch))
            left = asyncio.ensure_future(_disconnected(receive))
            await asyncio.wait((pump, left), return_when=asyncio.FIRST_COMPLETED)
            if pump.done():
                left.cancel()
                return pump.result()
            pump.cancel()
            self.core.counts["caller_left"] += 1  # type: ignore[union-attr]
            return False
        finally:
            await response.aclose()
            upstream.done(shard)

    async def _local(self, path: str, send: Any) -> None:
        core = self.core
        if path == "/healthz":
            return await _respond(send, 200, b'{"status":"ok"}')
        if path == "/readyz":
            ready = core is not None and core.routes.loaded
            return await _respond(send, 200 if ready else 503, json.dumps(
                {"status": "ready" if ready else "route table not loaded yet"}).encode())
        if path == "/metrics":
            from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

            body = generate_latest(REGISTRY)
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", CONTENT_TYPE_LATEST.encode()),
                                    (b"content-length", str(len(body)).encode())]})
            return await send({"type": "http.response.body", "body": body})
        await _respond(send, 200, json.dumps(core.stats() if core else {}).encode())

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as err:
                    await send({"type": "lifespan.startup.failed", "message": str(err)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


class _Watch:
    """What the gateway keeps of a response while relaying it (all of it when sampled, else the usage)."""

    def __init__(self, stream: bool, usage_only: bool = False):
        self.status = 0
        self.stream = stream
        self.chunks: list[bytes] = []
        self.parser = SSEParser() if stream else None
        self.assembler = (UsageOnly() if usage_only else Assembler()) if stream else None
        self.message: dict | None = None
        self.retry_after: str | None = None
        self.headers: Any = None

    def feed(self, chunk: bytes) -> None:
        if self.status != 200:
            return
        if self.parser is None:
            self.chunks.append(chunk)
            return
        for event in self.parser.feed(chunk):
            if self.assembler.feed(event):  # type: ignore[union-attr]
                self.message = self.assembler.message()  # type: ignore[union-attr]

    def answer(self) -> dict | None:
        if self.stream:
            return self.message
        try:
            answer = json.loads(b"".join(self.chunks))
        except ValueError:
            return None
        return answer if isinstance(answer, dict) else None


async def _pump(response: httpx2.Response, send: Any, watch: _Watch | None) -> bool:
    try:
        async for chunk in response.aiter_raw():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if watch is not None:
                try:
                    watch.feed(chunk)
                except Exception:
                    log.exception("watching a response failed; it is not shadowed")
                    watch.status = -1
    except httpx2.TransportError as err:  # the upstream broke off mid-body
        log.warning("upstream response broke off: %s", type(err).__name__)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return False
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    return True


async def _disconnected(receive: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _read_body(receive: Any) -> bytes:
    parts = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        parts.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(parts)


async def _respond(send: Any, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def create_app() -> Gateway:
    """The app uvicorn serves (``--factory``): settings from the environment."""
    return Gateway(get_settings())
