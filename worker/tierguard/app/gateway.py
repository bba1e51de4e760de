"""``tierguard gateway``: Anthropic's API for any app, routed and shadowed by category.

A plain ASGI app (served by uvicorn). ``POST /v1/messages`` with the category
header gets its ``model`` from the category's route and is sampled through the
same :class:`~tierguard.app.core.Core` as the SDK wrapper; everything else
passes through unchanged. The caller's own credentials and headers go upstream;
the gateway stores none and logs none. Responses (status, headers other than
hop-by-hop ones, body) are relayed as they arrive, streams event by event;
a sampled streamed answer is assembled on the side and shadowed once it reaches
``message_stop``. A caller that leaves mid-stream cancels the upstream request.

Request bodies are read up to ``TIERGUARD_GATEWAY_MAX_BODY`` (a larger one, or a
``Content-Length`` announcing one, is an Anthropic-shaped 413 and nothing goes
upstream); a caller that leaves mid-body sends nothing upstream. A routed body goes
upstream byte for byte as the caller sent it but for the value of its top-level
``model`` (rewritten in place, or inserted first when absent); when the route keeps
the caller's model the bytes are untouched. A ``gzip``/``deflate`` body is decoded
(the limit applies to the decoded size too), routed and shadowed, and goes upstream
decoded, without ``content-encoding`` (see :mod:`~tierguard.app.upstream`). Bodies
above ``OFF_LOOP`` bytes (and every encoded one) are decoded, parsed, routed and
rewritten on a worker thread, so the event loop keeps serving while one is read.
Other paths keep the API's larger limits where it has them (batches, files).
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
from tierguard.app.upstream import OFF_LOOP, TooLarge, Upstream, parse_request, with_model
from tierguard.config import Settings, get_settings, mask_url, upstream_url
from tierguard.contract.job import SHAPING_HEADERS

log = logging.getLogger(__name__)

HOP_BY_HOP = {b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te",
              b"trailer", b"trailers", b"transfer-encoding", b"upgrade"}
_NOT_FORWARDED = HOP_BY_HOP | {b"host", b"content-length"}
# Paths whose API limit is above the Messages API's: they keep their own (bytes).
_LARGER_LIMITS = (("/v1/messages/batches", 256_000_000), ("/v1/files", 500_000_000))


class CallerLeft(Exception):
    """The caller disconnected before its request body ended."""


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
        self.core.check_fork()  # its refresher keeps /readyz honest before any request
        self.upstream = Upstream(upstream_url(self.settings), self.settings.gateway_max_connections,
                                 self.settings.gateway_timeout)
        if self.upstream.proxy:
            log.info("upstream through the proxy %s", mask_url(self.upstream.proxy))

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
        core = self.core
        assert core is not None
        limit = self._limit(method, path)
        try:
            body = await _read_body(receive, limit, _declared(scope["headers"]))
        except TooLarge:
            return await self._too_large(send, limit)
        except CallerLeft:  # nothing reaches the upstream: the request was never whole
            core.counts["caller_left"] += 1
            return None
        headers, category = self._forwarded(scope["headers"])
        target = path + ("?" + scope["query_string"].decode("latin-1") if scope["query_string"] else "")
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

    def _limit(self, method: str, path: str) -> int:
        limit = self.settings.gateway_max_body
        for prefix, larger in _LARGER_LIMITS:
            if method == "POST" and path.startswith(prefix):
                return max(limit, larger)
        return limit

    async def _too_large(self, send: Any, limit: int) -> None:
        self.core.counts["too_large"] += 1  # type: ignore[union-attr]
        await _respond(send, 413, error_body(f"request body is larger than the gateway's limit of "
                                             f"{limit} bytes (TIERGUARD_GATEWAY_MAX_BODY)",
                                             "request_too_large"))

    async def _messages(self, name: str, target: str, headers: list, body: bytes, receive: Any,
                        send: Any) -> None:
        core = self.core
        assert core is not None
        codings = _codings(headers)
        try:
            cat, routed, forwarded = await _maybe_off_loop(
                len(body) > OFF_LOOP or bool(codings), self._route_body, name, body, codings)
        except TooLarge:
            return await self._too_large(send, self.settings.gateway_max_body)
        except (ValueError, RecursionError):  # let the API say what is wrong with it
            core.uncategorized("unreadable_body")
            return await self._relay("POST", target, headers, body, receive, send)
        if cat is None:
            return await self._relay("POST", target, headers, body, receive, send)
        # Every answer is read on the side (its usage: production's tokens, measured; the whole
        # answer when sampled): ask for it uncompressed. The body goes decoded.
        drop = (b"accept-encoding", b"content-encoding") if codings else (b"accept-encoding",)
        headers = [h for h in headers if h[0] not in drop] + [(b"accept-encoding", b"identity")]
        await self._routed(cat, routed, target, headers, forwarded, receive, send)

    def _route_body(self, name: str, body: bytes, codings: list[str]) -> tuple[Any, dict, bytes]:
        """(category, routed request, the bytes to send) for a Messages body (TooLarge or
        ValueError if it cannot be read); the caller's bytes unless the route changes ``model``."""
        parsed = parse_request(body, codings, self.settings.gateway_max_body)
        cat, routed = self.core.route(name, parsed.request)  # type: ignore[union-attr]
        if cat is None or ("model" in parsed.request and routed.get("model") == parsed.request["model"]):
            return cat, routed, parsed.raw
        return cat, routed, with_model(parsed, routed["model"])

    async def _routed(self, cat: Any, routed: dict, target: str, headers: list, body: bytes,
                      receive: Any, send: Any) -> None:
        """Send a routed request; count its answer, and shadow it when sampled."""
        core = self.core
        assert core is not None
        sampled = core.sampled(cat, routed)
        started = time.perf_counter()
        watch = _Watch(routed.get("stream") is True, usage_only=not sampled)
        done = await self._relay("POST", target, headers, body, receive, send, watch)
        if watch.status == 429:  # production is rate-limited on this model: its shadows wait
            core.rate_limited(routed.get("model"), watch.retry_after)
        core.saw_headers(routed.get("model"), watch.headers)
        if done and watch.status == 200:
            answer = watch.answer()
            if answer is not None:
                core.served(cat, routed, answer.get("usage"))
                if sampled:
                    core.submit(cat, routed, answer, started, headers=_shaping(headers), body=body)

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


def _declared(raw: list[tuple[bytes, bytes]]) -> int | None:
    """The request's ``Content-Length``, if it gives one."""
    for name, value in raw:
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _read_body(receive: Any, limit: int, declared: int | None) -> bytes:
    """The whole body; TooLarge as soon as it is known to pass ``limit`` (the rest is never held)."""
    if declared is not None and declared > limit:
        raise TooLarge
    parts, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise CallerLeft
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise TooLarge
        parts.append(chunk)
        if not message.get("more_body"):
            return b"".join(parts)


async def _maybe_off_loop(off: bool, func: Any, *args: Any) -> Any:
    return await asyncio.to_thread(func, *args) if off else func(*args)


def _codings(headers: list[tuple[bytes, bytes]]) -> list[str]:
    """The request's content codings, in the order they were applied (``identity`` left out)."""
    codings = []
    for name, value in headers:
        if name == b"content-encoding":
            codings += [c.strip().lower() for c in value.decode("latin-1").split(",")]
    return [c for c in codings if c and c != "identity"]


def _shaping(headers: list[tuple[bytes, bytes]]) -> dict[str, str] | None:
    """The headers that shape the request (its betas) a shadow must send too; never credentials."""
    found: dict[str, list[str]] = {}
    for name, value in headers:
        if name.decode("latin-1") in SHAPING_HEADERS:
            found.setdefault(name.decode("latin-1"), []).append(value.decode("latin-1"))
    return {k: ",".join(v) for k, v in found.items()} or None


async def _respond(send: Any, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def create_app() -> Gateway:
    """The app uvicorn serves (``--factory``): settings from the environment."""
    return Gateway(get_settings())
