"""Escalation: a cheap rung's answer that fails its category's checks, replaced before the caller sees it.

A call of a category with ``escalate_on``, routed to a rung below the reference, has its answer
checked (:mod:`tierguard.compare.checks`) once it is read whole — a stream only with
``buffer_streams``: it is then read whole before the caller gets any of it. On a failure the same
request, its ``model`` set to ``escalate_to`` (the reference, or the next rung up), goes once
more and the caller gets that answer instead. One escalation per request; if the escalated call
fails (an exception or a status other than 200), the caller gets the original answer: never an
error tierguard caused. Decisions are pure functions here; the transports
(:mod:`~tierguard.app.transport`, the gateway) send.
"""

from __future__ import annotations

import json
from typing import Any

import httpx2

from tierguard.app.relay import Watch
from tierguard.app.stream import UNASSEMBLED
from tierguard.app.upstream import parse_request, with_model
from tierguard.compare.checks import Failure
from tierguard.policy import CategoryPolicy

HEADER = "x-tierguard-escalated"


def target(cat: CategoryPolicy | None, model: str | None, rolling: str | None = None) -> str | None:
    """Where a failing answer of ``model`` goes (None: the call is not checked); ``rolling``: the
    model a staged rollout sends a share of the category's calls to (checked too)."""
    if cat is None or not cat.escalate_on or model == cat.reference:
        return None
    if model not in cat.rungs[:-1]:
        return cat.reference if model is not None and model == rolling else None
    if cat.escalate_to == "next":
        return cat.rungs[cat.rungs.index(model) + 1]
    return cat.reference


def parsed(content: bytes) -> dict[str, Any] | None:
    """A Message answered whole, as JSON (None: not a JSON object)."""
    try:
        answer = json.loads(content)
    except ValueError:
        return None
    return answer if isinstance(answer, dict) else None


def answer_of(content: bytes, sse: bool, limit: int) -> dict[str, Any] | None:
    """A whole answer as a Message: its JSON, or an event stream assembled (None: neither, or a
    stream cut short or too long to assemble)."""
    if not sse:
        return parsed(content)
    watch = Watch(True, limit=limit)
    watch.status = 200
    watch.feed(content)
    answer = watch.answer() if watch.message is not None and not watch.overflowed else None
    return answer if isinstance(answer, dict) and not answer.get(UNASSEMBLED) else None


def failure(cat: CategoryPolicy, answer: Any) -> Failure | None:
    """The check ``answer`` fails (a Message as JSON bytes or an object), or None."""
    if isinstance(answer, (bytes, bytearray)):
        try:
            answer = json.loads(answer)
        except ValueError:
            return Failure("invalid", "the answer is not a JSON message")
    if not isinstance(answer, dict):
        return Failure("invalid", "the answer is not a JSON message")
    return cat.checks.check(answer)


def request_to(request: httpx2.Request, body: bytes, model: str, limit: int) -> httpx2.Request:
    """``request`` again, its body's ``model`` set to ``model`` (all else byte for byte)."""
    parsed = parse_request(body, [], limit)
    headers = [(k, v) for k, v in request.headers.raw if k.lower() != b"content-length"]
    return httpx2.Request(request.method, request.url, headers=headers,
                          content=with_model(parsed, model), extensions=request.extensions)
