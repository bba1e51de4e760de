"""The gateway's side of escalation (:mod:`~tierguard.app.escalation`): a checked answer is read whole
from the upstream before the caller gets any of it.

:func:`checked_relay` sends the routed request, reads its answer whole (a stream too: the category
has ``buffer_streams``) within the gateway's deadline and checks it. A failure sends the same
request once more, its ``model`` set to the escalation target, and relays that answer, marked
``x-tierguard-escalated: REASON``; if that call fails, the caller gets the original answer.
An answer longer than ``TIERGUARD_STREAM_ASSEMBLY_MAX`` is not held in memory to be checked: what was
read goes to the caller and the rest is relayed as it comes, unchecked (``checked_too_long``).
Either answer is fed to the call's :class:`~tierguard.app.relay.Watch`, so it is counted and
shadowed as the answer the caller got. An OpenAI-compatible call (``chat``) is checked as its
Messages-shaped answer (:class:`~tierguard.app.relay.ChatWatch`) and escalated as the chat
request it is, its ``model`` changed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx2

from tierguard.app import escalation
from tierguard.app.admission import error_body
from tierguard.app.forwarding import Leaving
from tierguard.app.relay import HOP_BY_HOP, ChatWatch, Watch, remaining, respond
from tierguard.app.upstream import parse_request, with_model

Answer = tuple[int, list[tuple[bytes, bytes]], bytes]  # status, headers to relay, body


class Long:
    """An answer longer than the limit: its head and what was read of it, the rest still upstream."""

    def __init__(self, response: httpx2.Response, shard: Any, read: bytes, rest: Any):
        self.response, self.shard, self.read, self.rest = response, shard, read, rest
        self.marked: list[tuple[bytes, bytes]] = []  # headers added (an escalated answer's mark)

    async def close(self, gateway: Any) -> None:
        await self.response.aclose()
        gateway.upstream.done(self.shard)


async def _read(gateway: Any, method: str, target: str, headers: list, body: bytes,
                until: float, limit: int | None = None) -> Answer | Long | None:
    """One upstream call read whole before ``until`` (None: it failed or ran out of time; a
    :class:`Long` past ``limit`` bytes, left open for the caller to relay and close)."""
    upstream = gateway.upstream
    try:
        response, shard = await asyncio.wait_for(upstream.send(method, target, headers, body),
                                                 remaining(until))
    except (TimeoutError, httpx2.TransportError):
        return None
    chunks: list[bytes] = []
    rest = response.aiter_raw()
    long = False
    try:
        long = await asyncio.wait_for(_drain(rest, chunks, limit), remaining(until))
    except (TimeoutError, httpx2.TransportError):
        chunks = None  # type: ignore[assignment]
    finally:
        if not long:  # read whole, failed or cancelled: given back now (a Long is closed by its relay)
            await response.aclose()
            upstream.done(shard)
    if long:
        return Long(response, shard, b"".join(chunks), rest)
    return None if chunks is None else (response.status_code, _kept(response), b"".join(chunks))


def _kept(response: httpx2.Response) -> list[tuple[bytes, bytes]]:
    return [(k.lower(), v) for k, v in response.headers.raw
            if k.lower() not in HOP_BY_HOP and k.lower() != b"content-length"]


async def _drain(rest: Any, chunks: list[bytes], limit: int | None) -> bool:
    """Read ``rest`` into ``chunks``; True when it passed ``limit`` bytes (the rest left unread)."""
    size = 0
    async for chunk in rest:
        chunks.append(chunk)
        size += len(chunk)
        if limit is not None and size > limit:
            return True
    return False


async def _relay_long(gateway: Any, long: Long, send: Any, watch: Watch, until: float,
                      left: asyncio.Future) -> bool:
    """Relay a long answer: what was read, then the rest as it comes (until the caller leaves)."""
    response = long.response
    try:
        watch.status, watch.headers = response.status_code, response.headers
        await send({"type": "http.response.start", "status": response.status_code,
                    "headers": _kept(response) + long.marked})
        await send({"type": "http.response.body", "body": long.read, "more_body": True})
        watch.see(long.read)
        while True:
            chunk = await asyncio.wait_for(anext(long.rest, b""), remaining(until))
            if not chunk:
                break
            if left.done():  # the caller is gone: the upstream is not read on for nobody
                gateway.core.left()
                return False
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            watch.see(chunk)
        await send({"type": "http.response.body", "body": b""})
        return True
    except (TimeoutError, httpx2.TransportError, OSError):
        return False
    finally:
        await long.close(gateway)


def _answer_of(first: Answer, limit: int, chat: bool) -> dict | None:
    """The whole answer as a Message (a chat answer: its Messages shape), or None."""
    sse = any(k == b"content-type" and v.startswith(b"text/event-stream") for k, v in first[1])
    if not chat:
        return escalation.answer_of(first[2], sse, limit)
    watch = ChatWatch(sse, False, limit)
    watch.status = 200
    watch.feed(first[2])
    return watch.answer()


async def _escalated(gateway: Any, cat: Any, routed: dict, to: str, target: str, headers: list,
                     body: bytes, first: Answer, until: float, chat: bool) -> tuple[Answer | Long, dict]:
    """(the answer the caller gets, the routed request it answers)."""
    core, settings = gateway.core, gateway.settings
    try:
        answer = _answer_of(first, settings.stream_assembly_max, chat)
        failed = None if answer is None else escalation.failure(cat, answer)
        if answer is not None:
            core.checked(cat, routed.get("model"), failed.reason if failed else None)
        if failed is None:
            return first, routed
        again = with_model(parse_request(body, [], settings.gateway_max_body), to)
    except Exception:
        core._failed("checking an answer")
        return first, routed
    other = await _read(gateway, "POST", target, headers, again, until, settings.stream_assembly_max)
    status = other.response.status_code if isinstance(other, Long) else other and other[0]
    if other is None or status != 200:
        if isinstance(other, Long):
            await other.close(gateway)
        core.escalation_failed(cat, routed.get("model"), to, failed.reason, status)
        return first, routed
    core.served(cat, routed, (answer or {}).get("usage"))  # the first answer was paid for too
    core.escalated(cat, routed.get("model"), to, failed.reason)
    mark = (escalation.HEADER.encode(), failed.reason.encode())
    if isinstance(other, Long):  # relayed as it comes
        other.marked.append(mark)
        return other, {**routed, "model": to}
    return (200, other[1] + [mark], other[2]), {**routed, "model": to}


async def checked_relay(gateway: Any, scope: dict, cat: Any, routed: dict, to: str, target: str,
                        headers: list, body: bytes, receive: Any, send: Any,
                        watch: Watch, chat: bool = False) -> tuple[bool, dict]:
    """Relay the answer the caller gets, checked; (whether it reached the caller, the routed
    request it answers: the escalated one when it was)."""
    until = asyncio.get_running_loop().time() + gateway.settings.gateway_deadline
    leaving = Leaving.of(scope, receive)
    left = leaving.future
    try:
        first = await _read(gateway, "POST", target, headers, body, until,
                            gateway.settings.stream_assembly_max)
        if isinstance(first, Long):
            gateway.core.refuse("checked_too_long", "an answer to check was longer than "
                                "TIERGUARD_STREAM_ASSEMBLY_MAX (%d): relayed unchecked",
                                gateway.settings.stream_assembly_max)
            return await _relay_long(gateway, first, send, watch, until, left), routed
        if first is None:
            if remaining(until) > 0:
                await respond(send, 502, error_body("the gateway cannot reach the upstream API"))
            else:
                gateway.core.refuse("deadline_exceeded", "%s", gateway._late())
                await respond(send, 504, error_body(gateway._late()))
            return False, routed
        final, routed = first, routed
        if first[0] == 200:
            final, routed = await _escalated(gateway, cat, routed, to, target, headers, body, first, until,
                                             chat)
        if left.done():
            gateway.core.left()
            if isinstance(final, Long):
                await final.close(gateway)
            return False, routed
        if isinstance(final, Long):
            return await _relay_long(gateway, final, send, watch, until, left), routed
        watch.status, watch.headers = final[0], httpx2.Headers(final[1])
        await send({"type": "http.response.start", "status": final[0], "headers": final[1]})
        await send({"type": "http.response.body", "body": final[2]})
        watch.see(final[2])
        return True, routed
    finally:
        leaving.close()
