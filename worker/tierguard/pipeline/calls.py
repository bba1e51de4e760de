"""Calling a model for a shadow job, with errors sorted into retryable and permanent."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import anthropic

from tierguard.contract.job import SHAPING_HEADERS
from tierguard.contract.messages import (
    cache_tokens_of,
    content_json_text,
    message_text,
    snapshot_of,
    usage_of,
)
from tierguard.errors import PermanentCallError, RetryableCallError, ShadowCallError
from tierguard.pipeline.platform_client import platform_of, sent_model


@dataclass(frozen=True)
class Answer:
    text: str
    input_tokens: int | None
    output_tokens: int | None
    latency_ms: float | None  # None for a Message Batches answer
    cache_write_tokens: int = 0
    cache_read_tokens: int = 0
    headers: Any = None  # the response's headers (its rate-limit view: tierguard.headroom.ratelimits)
    batch: bool = False  # answered through the Message Batches API (priced at its discount)
    platform: str = "anthropic"  # answered through Bedrock or Vertex (TIERGUARD_SHADOW_PLATFORM)
    snapshot: str | None = None  # the model snapshot the API reported (the answer's ``model``)
    stop_reason: str | None = None  # why the answer ended (the answer checks read it)


def _retry_after(err: anthropic.APIStatusError) -> float | None:
    headers = err.response.headers
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                pass
    return None


_KINDS = {429: "rate_limited", 529: "overloaded", 408: "timeout", 409: "conflict"}


def classify(err: Exception) -> ShadowCallError:
    """Map an SDK exception to tierguard's retryable/permanent errors."""
    if isinstance(err, anthropic.APITimeoutError):
        return RetryableCallError("model call timed out", kind="timeout")
    if isinstance(err, anthropic.APIConnectionError):
        return RetryableCallError(f"cannot reach the model API: {err}", kind="connection")
    if isinstance(err, anthropic.APIStatusError):
        status = err.status_code
        kind = _KINDS.get(status) or ("server_error" if status >= 500 else f"http_{status}")
        message = f"model API answered {status}: {getattr(err, 'message', err)}"
        if status in _KINDS or status >= 500:
            return RetryableCallError(message, kind=kind, status=status, retry_after=_retry_after(err))
        return PermanentCallError(message, kind=kind, status=status)
    return PermanentCallError(f"{type(err).__name__}: {err}", kind="client_error")


# The only keyword arguments every SDK version's ``messages.create`` takes; the rest of a body
# goes as ``extra_body``, so a key this SDK does not know (``temperature`` in 2.16, a beta
# field) is sent as production sent it instead of raising TypeError.
NAMED = ("model", "max_tokens", "messages")


def sdk_params(body: dict[str, Any], headers: dict[str, str] | None = None) -> dict[str, Any]:
    """``messages.create`` keyword arguments that send exactly ``body`` (without ``stream``)."""
    params: dict[str, Any] = {k: body[k] for k in NAMED if k in body}
    extra = {k: v for k, v in body.items() if k not in NAMED and k != "stream"}
    if extra:
        params["extra_body"] = extra
    shaping = {k: v for k, v in (headers or {}).items() if k.lower() in SHAPING_HEADERS}
    if shaping:  # never a credential or version a job names: the worker's client has its own
        params["extra_headers"] = shaping
    return params


def call_model(client: anthropic.Anthropic, model: str, request: dict[str, Any],
               headers: dict[str, str] | None = None) -> Answer:
    t0 = time.perf_counter()
    try:
        message = client.messages.create(**sdk_params({**request, "model": model}, headers))
    except anthropic.AnthropicError as err:
        raise classify(err) from None
    except TypeError as err:  # a job without max_tokens or messages
        raise PermanentCallError(f"the job is not a Messages request: {err}", kind="bad_request") from None
    latency = (time.perf_counter() - t0) * 1000
    inp, out = usage_of(message)
    return Answer(message_text(message), inp, out, latency, *cache_tokens_of(message),
                  snapshot=snapshot_of(message), stop_reason=getattr(message, "stop_reason", None))


async def call_json_async(client: anthropic.AsyncAnthropic, body: dict[str, Any],
                          headers: dict[str, str] | None = None) -> tuple[dict[str, Any], float, Any]:
    """One Messages API call; (the response's JSON, milliseconds, its headers). Reads the raw body (the
    SDK's ``with_raw_response``): building the typed ``Message`` costs ~12 % of a shadow
    call's CPU, and a worker only needs the content and the usage."""
    try:  # on Bedrock or Vertex, the platform's id of the model
        body = {**body, "model": sent_model(client, body["model"])} if "model" in body else body
    except LookupError as err:
        raise PermanentCallError(str(err), kind="no_model_id") from None
    params = sdk_params(body, headers)
    t0 = time.perf_counter()
    try:
        raw = await client.messages.with_raw_response.create(**params)
        data = json.loads(raw.http_response.content)
    except anthropic.AnthropicError as err:
        raise classify(err) from None
    except TypeError as err:  # a job without max_tokens or messages
        raise PermanentCallError(f"the job is not a Messages request: {err}", kind="bad_request") from None
    except ValueError:
        raise PermanentCallError("model API answered with a body that is not JSON",
                                 kind="bad_response") from None
    if not isinstance(data, dict):
        raise PermanentCallError("model API answered with JSON that is not a message",
                                 kind="bad_response")
    return data, (time.perf_counter() - t0) * 1000, raw.http_response.headers


async def call_model_async(client: anthropic.AsyncAnthropic, model: str,
                           request: dict[str, Any], headers: dict[str, str] | None = None) -> Answer:
    """As :func:`call_model`, on the worker's event loop (``headers``: the job's shaping headers)."""
    body, latency, headers = await call_json_async(client, {**request, "model": model}, headers)
    usage = body.get("usage") or {}
    return Answer(content_json_text(body.get("content") or []), usage.get("input_tokens"),
                  usage.get("output_tokens"), latency, *cache_tokens_of(body),
                  headers=headers, platform=platform_of(client), snapshot=snapshot_of(body),
                  stop_reason=body.get("stop_reason") if isinstance(body.get("stop_reason"), str) else None)


async def call_model_with_retries(client: anthropic.AsyncAnthropic, model: str,
                                  request: dict[str, Any], attempts: int, cap: float = 30.0) -> Answer:
    """:func:`call_model_async`, retrying transient errors (the server's retry-after or 2^n s)."""
    for attempt in range(1, attempts + 1):
        try:
            return await call_model_async(client, model, request)
        except RetryableCallError as err:
            if attempt == attempts:
                raise
            wait = err.retry_after if err.retry_after is not None else 0.5 * 2 ** (attempt - 1)
            await asyncio.sleep(min(wait, cap))
    raise AssertionError("unreachable")
