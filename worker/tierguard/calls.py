"""Calling a model for a shadow job, with errors sorted into retryable and permanent."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import anthropic

from tierguard.errors import PermanentCallError, RetryableCallError, ShadowCallError


@dataclass(frozen=True)
class Answer:
    text: str
    input_tokens: int | None
    output_tokens: int | None
    latency_ms: float


def content_text(content: Any) -> str:
    """The text of a request's ``content``: a string or a list of blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(b.get("text", "") for b in content if isinstance(b, dict))
    return ""


def message_text(message: Any) -> str:
    """The comparable text of a Message: its text blocks, then any tool calls as JSON."""
    parts = []
    for block in getattr(message, "content", None) or []:
        kind = getattr(block, "type", None)
        if kind == "text":
            parts.append(block.text)
        elif kind == "tool_use":
            parts.append(json.dumps({"tool": block.name, "input": block.input}, sort_keys=True))
    return "\n".join(parts)


def usage_of(message: Any) -> tuple[int | None, int | None]:
    usage = getattr(message, "usage", None)
    if usage is None:
        return None, None
    return getattr(usage, "input_tokens", None), getattr(usage, "output_tokens", None)


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


def call_model(client: anthropic.Anthropic, model: str, request: dict[str, Any]) -> Answer:
    params = {k: v for k, v in request.items() if k not in ("model", "stream")}
    t0 = time.perf_counter()
    try:
        message = client.messages.create(model=model, **params)
    except anthropic.AnthropicError as err:
        raise classify(err) from None
    latency = (time.perf_counter() - t0) * 1000
    inp, out = usage_of(message)
    return Answer(message_text(message), inp, out, latency)


async def call_model_async(client: anthropic.AsyncAnthropic, model: str,
                           request: dict[str, Any]) -> Answer:
    """As :func:`call_model`, reading the raw JSON body (the SDK's ``with_raw_response``):
    building the typed ``Message`` costs ~12 % of a shadow call's CPU, and a worker only
    needs the text and the usage."""
    params = {k: v for k, v in request.items() if k not in ("model", "stream")}
    t0 = time.perf_counter()
    try:
        raw = await client.messages.with_raw_response.create(model=model, **params)
        body = json.loads(raw.http_response.content)
    except anthropic.AnthropicError as err:
        raise classify(err) from None
    except ValueError:
        raise PermanentCallError("model API answered with a body that is not JSON",
                                 kind="bad_response") from None
    latency = (time.perf_counter() - t0) * 1000
    usage = body.get("usage") or {}
    return Answer(content_json_text(body.get("content") or []), usage.get("input_tokens"),
                  usage.get("output_tokens"), latency)


def content_json_text(blocks: list[dict[str, Any]]) -> str:
    """:func:`message_text` for the JSON form of a Message's content."""
    parts = []
    for block in blocks:
        if block.get("type") == "text":
            parts.append(block.get("text", ""))
        elif block.get("type") == "tool_use":
            parts.append(json.dumps({"tool": block.get("name"), "input": block.get("input")},
                                    sort_keys=True))
    return "\n".join(parts)
