"""The shadow job's request: a deep, immutable snapshot of what production sent, taken at once.

A sampled call is copied on the caller's thread before the call returns (an app
that appends to its ``messages`` list for the next turn must not change this
turn's shadow): the body is serialised to JSON text, which nothing can mutate,
and parsed back on the publisher's thread. What the SDK would send is what is
kept: its sentinels (``NOT_GIVEN``, ``omit``) are dropped, ``extra_body`` is
merged in, transport options (``timeout``, ``extra_query``, ``stream``) are left
out, and the headers that shape the request (``anthropic-beta``, also from
``betas=[…]``) travel beside it. Credentials never do. A sampled call goes to the
publisher's thread as a :class:`Sampled`, built there into its job (:func:`build_job`).
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import dataclass
from typing import Any

import anthropic

from tierguard.contract.job import SHAPING_HEADERS, ShadowJob
from tierguard.contract.messages import cache_tokens_of, message_text, snapshot_of, usage_of

# Keyword arguments of ``messages.create`` that are transport options, not the model request.
TRANSPORT_KEYS = frozenset({"extra_headers", "extra_query", "extra_body", "timeout", "stream", "model",
                            "betas"})
_SENTINELS = tuple({type(getattr(anthropic, name)) for name in ("NOT_GIVEN", "not_given", "omit")
                    if hasattr(anthropic, name)})


def is_sentinel(value: Any) -> bool:
    """True for the SDK's "argument not given" markers (``NOT_GIVEN``, ``omit``)."""
    return isinstance(value, _SENTINELS)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "model_dump"):  # the SDK's typed params and models
        return value.model_dump(mode="json", exclude_none=True)
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", "replace")
    if is_sentinel(value):
        return None
    if isinstance(value, (tuple, set, frozenset)) or hasattr(value, "__iter__"):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _given(value: Any) -> Any:
    """``value`` without the sentinels nested in its dicts (as the SDK leaves them out)."""
    if isinstance(value, dict):
        return {k: _given(v) for k, v in value.items() if not is_sentinel(v)}
    if isinstance(value, (list, tuple)):
        return [_given(v) for v in value]
    return value


def request_body(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The JSON body the SDK sends for these ``create`` keyword arguments (``model`` left out)."""
    body = {k: v for k, v in kwargs.items() if k not in TRANSPORT_KEYS and not is_sentinel(v)}
    extra = kwargs.get("extra_body")
    if isinstance(extra, dict):
        body.update((k, v) for k, v in extra.items() if k != "model" and not is_sentinel(v))
    return _given(body)


def shaping_headers(kwargs: dict[str, Any], defaults: Any = None) -> dict[str, str] | None:
    """The request-shaping headers of a call: the client's defaults, then ``extra_headers``, then
    ``betas`` (None when there are none)."""
    found: dict[str, str] = {}
    for source in (defaults, kwargs.get("extra_headers")):
        if isinstance(source, dict):
            for name, value in source.items():
                if str(name).lower() in SHAPING_HEADERS and isinstance(value, str):
                    found[str(name).lower()] = value
    betas = kwargs.get("betas")
    if isinstance(betas, (list, tuple)) and betas:
        found["anthropic-beta"] = ",".join(str(b) for b in betas)
    return found or None


def take(kwargs: dict[str, Any]) -> str:
    """The snapshot: the request body as JSON text, taken now (on the caller's thread)."""
    return json.dumps(request_body(kwargs), default=_jsonable, ensure_ascii=False)


def job_request(snapshot: str | bytes) -> dict[str, Any]:
    """A snapshot (or a gateway's body) back as the job's request, transport keys dropped."""
    body = json.loads(snapshot)
    if not isinstance(body, dict):
        raise ValueError("a shadow job's request must be a JSON object")
    return {k: v for k, v in body.items() if k not in TRANSPORT_KEYS}


@dataclass(frozen=True, slots=True)
class Sampled:
    """One sampled call, handed from the caller's thread to the publisher's: ``body`` is the
    request as sent (:mod:`tierguard.app.snapshot`), ``message`` the served answer."""

    category: str
    served: str
    shadow: str
    body: str | bytes
    headers: dict[str, str] | None
    message: Any
    latency_ms: float
    requested_at: dt.datetime


def build_job(s: Sampled) -> ShadowJob:
    """The job for one sampled call (built on the publisher's thread)."""
    inp, out = usage_of(s.message)
    write, read = cache_tokens_of(s.message)
    return ShadowJob(job_id=uuid.uuid4().hex, category=s.category, served_model=s.served,
                     shadow_model=s.shadow, request=job_request(s.body),
                     primary_text=message_text(s.message), primary_input_tokens=inp,
                     primary_output_tokens=out, primary_cache_write_tokens=write,
                     primary_cache_read_tokens=read, primary_latency_ms=round(s.latency_ms, 3),
                     requested_at=s.requested_at.isoformat(),
                     headers=dict(s.headers) if s.headers else None,
                     served_snapshot=snapshot_of(s.message))
