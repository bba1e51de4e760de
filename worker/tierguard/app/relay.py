"""The gateway's plumbing on the caller's side: reading a request body, answering, relaying an
upstream response and watching it, and ending one cut short.

A response cut after its headers (the deadline passed, the upstream broke off) ends the way
the caller can tell: a stream (``text/event-stream``) gets an ``error`` event, as the API
sends one mid-stream, and ends; any other body is cut by closing the connection under it
(the scope's :data:`~tierguard.app.admission.ABORT`), so the caller sees a short read,
never a shorter body that looks whole.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote, unquote

import httpx2

from tierguard.app.admission import ABORT, error_body
from tierguard.app.lean_client import checked_target
from tierguard.app.naming import path_category
from tierguard.app.openai_compat import ChatAssembler, messages_answer
from tierguard.app.stream import USAGE_EVENTS, Assembler, SSEParser, UsageOnly
from tierguard.app.upstream import TooLarge
from tierguard.config import mask_url
from tierguard.contract.eventstream import EventStreamParser
from tierguard.contract.job import SHAPING_HEADERS
from tierguard.headroom import ratelimits

log = logging.getLogger("tierguard.app.gateway")

CUT_WAIT = 1.0  # seconds an error event may wait for a caller that is not reading
HOP_BY_HOP = {b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te",
              b"trailer", b"trailers", b"transfer-encoding", b"upgrade"}
NOT_FORWARDED = HOP_BY_HOP | {b"host", b"content-length", b"expect"}  # a request's: the body is read whole


_PATH_SAFE = "/!$&'()*+,;=:@"  # what stays as it is when a decoded path is percent-quoted again


def request_target(scope: dict) -> str:
    """The target to send upstream: the path as the caller sent it (``raw_path``; a decoded one
    percent-quoted again), less its ``/c/CATEGORY/`` prefix, and the query string. ValueError
    naming it when it has a control, space or non-ASCII byte."""
    rest, named = path_category(scope["path"])
    raw, target = scope.get("raw_path"), None
    if raw:
        sent = raw.decode("latin-1")
        stripped, again = path_category(sent) if named else (sent, None)
        if not named or (again is not None and unquote(stripped) == rest):
            target = stripped
    if target is None:
        target = quote(rest, safe=_PATH_SAFE)
    query = scope.get("query_string")
    if query:
        target += "?" + query.decode("latin-1")
    checked_target(target)
    return target


class CallerLeft(Exception):
    """The caller disconnected before its request body ended."""


def declared(raw: list[tuple[bytes, bytes]]) -> int | None:
    """The request's ``Content-Length``, if it gives one."""
    for name, value in raw:
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def read_body(receive: Any, limit: int, length: int | None) -> bytes:
    """The whole body; TooLarge as soon as it is known to pass ``limit`` (the rest is never held)."""
    if length is not None and length > limit:
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


async def respond(send: Any, status: int, body: bytes, close: bool = False) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status,
                "headers": headers + ([(b"connection", b"close")] if close else [])})
    await send({"type": "http.response.body", "body": body})


def remaining(until: float) -> float:
    """Seconds left until ``until`` on the running loop's clock (never below 0)."""
    return max(0.0, until - asyncio.get_running_loop().time())


async def disconnected(receive: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class Watch:
    """What the gateway keeps of a response while relaying it (all of it when sampled, else the
    usage). A sampled stream past ``limit`` bytes is no longer assembled: its usage is still read."""

    def __init__(self, stream: bool, usage_only: bool = False, limit: int = 8 * 1024 * 1024,
                 frames: bool = False):
        self.status = 0
        self.stream = stream
        self.usage_only = usage_only
        self.limit = limit
        self.size = 0
        self.chunks: list[bytes] = []
        parser = EventStreamParser if frames else SSEParser  # frames: Bedrock's AWS event-stream
        self.parser = parser(limit, USAGE_EVENTS if usage_only else None) if stream else None
        self.assembler = (UsageOnly() if usage_only else Assembler(limit)) if stream else None
        self.message: dict | None = None
        self.headers: Any = None

    def feed(self, chunk: bytes) -> None:
        if self.status != 200:
            return
        parser, assembler = self.parser, self.assembler
        if parser is None or assembler is None:
            self.chunks.append(chunk)
            return
        self.size += len(chunk)
        if self.size > self.limit and not (self.usage_only or assembler.too_long):
            assembler.give_up()  # too long to shadow: from now on only its usage is read
            parser.only = USAGE_EVENTS
        for event in parser.feed(chunk):
            if assembler.feed(event):
                self.message = assembler.message()

    def see(self, chunk: bytes) -> None:
        """:meth:`feed`, never raising: a chunk it cannot read ends the watch (logged; no shadow)."""
        try:
            self.feed(chunk)
        except Exception:
            log.exception("watching a response failed; it is not shadowed")
            self.status = -1

    @property
    def overflowed(self) -> bool:
        """One event of the stream was longer than the limit: nothing more was read of it."""
        return self.parser is not None and self.parser.overflow

    def answer(self) -> dict | None:
        if self.stream:
            return self.message
        try:
            answer = json.loads(b"".join(self.chunks))
        except ValueError:
            return None
        return answer if isinstance(answer, dict) else None


class ChatWatch(Watch):
    """A :class:`Watch` over an OpenAI-compatible answer (``/v1/chat/completions``): a
    ``chat.completion`` body, or ``data:`` chunks ending with ``data: [DONE]``; its answer is
    Messages-shaped (:mod:`~tierguard.app.openai_compat`). A stream that never sends ``[DONE]``
    hands nothing over."""

    def __init__(self, stream: bool, usage_only: bool = False, limit: int = 8 * 1024 * 1024):
        super().__init__(stream, usage_only, limit)
        if stream:
            self.parser = SSEParser(limit)
            self.chat = ChatAssembler(limit, usage_only)

    def feed(self, chunk: bytes) -> None:
        if self.status != 200:
            return
        if not self.stream or self.parser is None:
            self.chunks.append(chunk)
            return
        self.size += len(chunk)
        if self.size > self.limit and not (self.usage_only or self.chat.too_long):
            self.chat.give_up()  # too long to shadow: from now on only its usage is read
        for event in self.parser.feed(chunk):
            self.chat.feed(event)

    def answer(self) -> dict | None:
        if self.stream:
            return self.chat.message() if self.parser is not None and self.parser.ended else None
        return messages_answer(super().answer())


Headers = list[tuple[bytes, bytes]]


def upstream_headers(raw: Headers, header: bytes) -> tuple[Headers, str | None]:
    """A request's headers as they go upstream (names lower-cased; hop-by-hop ones, ``host``,
    ``content-length``, ``expect`` and the category ``header`` dropped), and its category."""
    headers, category = [], None
    for name, value in raw:
        name = name.lower()
        if name == header:
            category = value.decode("latin-1").strip() or None
        elif name not in NOT_FORWARDED:
            headers.append((name, value))
    return headers, category


def uncompressed(headers: Headers, decoded: bool = False) -> Headers:
    """``headers`` asking for an uncompressed answer (every answer is read on the side); ``decoded``:
    the body goes decoded, without its ``content-encoding``."""
    drop = (b"accept-encoding", b"content-encoding") if decoded else (b"accept-encoding",)
    return [h for h in headers if h[0] not in drop] + [(b"accept-encoding", b"identity")]


UNANSWERED = "the upstream API did not answer in time"  # a read timeout's 504


def unreachable(base_url: str, err: Exception) -> bytes:
    """The 502's body for an upstream the gateway cannot reach (logged, its URL masked)."""
    log.warning("upstream %s unreachable: %s", mask_url(base_url), type(err).__name__)
    return error_body(f"the gateway cannot reach the upstream API ({type(err).__name__})")


def broke_off(err: Exception) -> str:
    """Why an answer is cut when the upstream broke off after its head (logged)."""
    log.warning("upstream response broke off: %s", type(err).__name__)
    return f"the upstream API broke off its answer ({type(err).__name__})"


def late(deadline: float) -> str:
    """Why an answer past the gateway's deadline is a 504, or cut."""
    return (f"the upstream API's answer took longer than the gateway's deadline of {deadline:g} s "
            f"(TIERGUARD_GATEWAY_DEADLINE)")


def is_sse(headers: Any) -> bool:
    """An answer streamed as server-sent events without a length: cut with an ``error`` event."""
    return "content-length" not in headers and (headers.get("content-type") or "").startswith(
        "text/event-stream")


def error_event(message: str) -> bytes:
    """The ``error`` event that ends a cut stream, as the API sends one mid-stream."""
    return b"event: error\ndata: " + error_body(message) + b"\n\n"


def heard(core: Any, model: str | None, status: int, headers: Any, overflowed: bool, limit: int,
          scope: str = "") -> None:
    """What a relayed answer's head tells ``core``: a 429 pauses its model's shadows, its rate-limit
    view; a stream event too long to watch is refused (counted)."""
    if status == 429:  # production is rate-limited on this model: its shadows wait
        core.rate_limited(model, headers.get("retry-after"), scope)
    core.saw_headers(model, headers, scope)
    if overflowed:
        core.refuse("stream_too_long", "a stream event was longer than TIERGUARD_STREAM_ASSEMBLY_MAX "
                    "(%d): relayed whole, not watched", limit)


Cut = Callable[[str], Awaitable[None]]


def cutter(scope: dict, send: Any, response: httpx2.Response) -> Cut:
    """How to end ``response``'s relay early, with a reason (see the module's docstring)."""
    sse = is_sse(response.headers)
    abort = (scope.get("extensions") or {}).get(ABORT)

    async def cut(message: str) -> None:
        if sse:
            event = error_event(message)
            try:
                async with asyncio.timeout(CUT_WAIT):  # a caller not reading: closed instead
                    await send({"type": "http.response.body", "body": event, "more_body": True})
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            except TimeoutError:
                pass
        if abort is not None:
            abort()
        # else: served without the gateway's protocol, the body is left unfinished (the server closes)
    return cut


async def pump(response: httpx2.Response, send: Any, watch: Watch | None, cut: Cut,
               unsent: list[dict] | None = None) -> bool:
    """Relay the response's body (after the head in ``unsent``, taken from it when sent: in the same
    turn as the first body bytes, so both go in one write); False if the upstream broke off."""
    if unsent:
        await send(unsent.pop())
    try:
        async for chunk in response.aiter_raw():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if watch is not None:
                watch.see(chunk)
    except httpx2.TransportError as err:  # the upstream broke off mid-body
        await cut(broke_off(err))
        return False
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    return True


def caller_key(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The caller's API key (``x-api-key``, else a bearer token), read only to name its tenant."""
    for name, value in headers:
        if name == b"x-api-key":
            return value.decode("latin-1").strip()
    for name, value in headers:
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            return value[7:].decode("latin-1").strip()
    return None


def caller_scope(policy: Any, headers: list[tuple[bytes, bytes]]) -> str:
    """With ``gateway_tenants``: the caller's key fingerprint (its 429s and headroom are its own)."""
    if not policy.gateway_tenants:
        return ""
    key = caller_key(headers)
    return ratelimits.fingerprint(key) if key else ""


def content_codings(headers: list[tuple[bytes, bytes]]) -> list[str]:
    """The request's content codings, in the order they were applied (``identity`` left out)."""
    codings = []
    for name, value in headers:
        if name == b"content-encoding":
            codings += [c.strip().lower() for c in value.decode("latin-1").split(",")]
    return [c for c in codings if c and c != "identity"]


def shaping(headers: list[tuple[bytes, bytes]]) -> dict[str, str] | None:
    """The headers that shape the request (its betas) a shadow must send too; never credentials."""
    found: dict[str, list[str]] = {}
    for name, value in headers:
        if name.decode("latin-1") in SHAPING_HEADERS:
            found.setdefault(name.decode("latin-1"), []).append(value.decode("latin-1"))
    return {k: ",".join(v) for k, v in found.items()} or None


async def maybe_off_loop(off: bool, func: Any, *args: Any) -> Any:
    return await asyncio.to_thread(func, *args) if off else func(*args)
