"""The gateway's side of escalation (:mod:`~tierguard.app.escalation`): a checked answer is read whole
from the upstream before the caller gets any of it.

:func:`checked_relay` sends the routed request, reads its answer whole (a stream too: the category
has ``buffer_streams``) within the gateway's deadline and checks it. A failure sends the same
request once more, its ``model`` set to the escalation target, and relays that answer, marked
``x-tierguard-escalated: REASON``; if that call fails, the caller gets the original answer.
Either answer is fed to the call's :class:`~tierguard.app.relay.Watch`, so it is counted and
shadowed as the answer the caller got.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx2

from tierguard.app import escalation
from tierguard.app.admission import error_body
from tierguard.app.relay import HOP_BY_HOP, Watch, disconnected, remaining, respond
from tierguard.app.upstream import parse_request, with_model

Answer = tuple[int, list[tuple[bytes, bytes]], bytes]  # status, headers to relay, body


async def _read(gateway: Any, method: str, target: str, headers: list, body: bytes,
                until: float) -> Answer | None:
    """One upstream call read whole before ``until`` (None: it failed or ran out of time)."""
    upstream = gateway.upstream
    try:
        response, shard = await asyncio.wait_for(upstream.send(method, target, headers, body),
                                                 remaining(until))
    except (TimeoutError, httpx2.TransportError):
        return None
    try:
        chunks = await asyncio.wait_for(_drain(response), remaining(until))
    except (TimeoutError, httpx2.TransportError):
        return None
    finally:
        await response.aclose()
        upstream.done(shard)
    kept = [(k.lower(), v) for k, v in response.headers.raw
            if k.lower() not in HOP_BY_HOP and k.lower() != b"content-length"]
    return response.status_code, kept, chunks


async def _drain(response: httpx2.Response) -> bytes:
    return b"".join([chunk async for chunk in response.aiter_raw()])


async def _escalated(gateway: Any, cat: Any, routed: dict, to: str, target: str, headers: list,
                     body: bytes, first: Answer, until: float) -> tuple[Answer, dict]:
    """(the answer the caller gets, the routed request it answers)."""
    core, settings = gateway.core, gateway.settings
    try:
        sse = any(k == b"content-type" and v.startswith(b"text/event-stream") for k, v in first[1])
        answer = escalation.answer_of(first[2], sse, settings.stream_assembly_max)
        failed = None if answer is None else escalation.failure(cat, answer)
        if answer is not None:
            core.checked(cat, routed.get("model"), failed.reason if failed else None)
        if failed is None:
            return first, routed
        again = with_model(parse_request(body, [], settings.gateway_max_body), to)
    except Exception:
        core._failed("checking an answer")
        return first, routed
    other = await _read(gateway, "POST", target, headers, again, until)
    if other is None or other[0] != 200:
        core.escalation_failed(cat, routed.get("model"), to, failed.reason, other and other[0])
        return first, routed
    core.served(cat, routed, (answer or {}).get("usage"))  # the first answer was paid for too
    core.escalated(cat, routed.get("model"), to, failed.reason)
    marked = other[1] + [(escalation.HEADER.encode(), failed.reason.encode())]
    return (200, marked, other[2]), {**routed, "model": to}


async def checked_relay(gateway: Any, scope: dict, cat: Any, routed: dict, to: str, target: str,
                        headers: list, body: bytes, receive: Any, send: Any,
                        watch: Watch) -> tuple[bool, dict]:
    """Relay the answer the caller gets, checked; (whether it reached the caller, the routed
    request it answers: the escalated one when it was)."""
    until = asyncio.get_running_loop().time() + gateway.settings.gateway_deadline
    left = asyncio.ensure_future(disconnected(receive))
    try:
        first = await _read(gateway, "POST", target, headers, body, until)
        if first is None:
            if remaining(until) > 0:
                await respond(send, 502, error_body("the gateway cannot reach the upstream API"))
            else:
                gateway.core.refuse("deadline_exceeded", "%s", gateway._late())
                await respond(send, 504, error_body(gateway._late()))
            return False, routed
        final, routed = first, routed
        if first[0] == 200:
            final, routed = await _escalated(gateway, cat, routed, to, target, headers, body, first, until)
        if left.done():
            gateway.core.left()
            return False, routed
        watch.status, watch.headers = final[0], httpx2.Headers(final[1])
        if final[0] == 429:
            watch.retry_after = watch.headers.get("retry-after")
        await send({"type": "http.response.start", "status": final[0], "headers": final[1]})
        await send({"type": "http.response.body", "body": final[2]})
        watch.feed(final[2])
        return True, routed
    finally:
        left.cancel()
