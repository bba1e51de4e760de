"""The Messages API's shapes: the comparable text of a request or an answer, and its usage.

Shared by the production side (answers are SDK objects) and the worker side
(answers are JSON bodies), so both reduce an answer to the same text.
"""

from __future__ import annotations

import json
from typing import Any


def content_text(content: Any) -> str:
    """The text of a request's ``content``: a string or a list of blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(b.get("text", "") for b in content if isinstance(b, dict))
    return ""


def message_text(message: Any) -> str:
    """The comparable text of a Message (an SDK object or its JSON): text blocks, then tool calls."""
    if isinstance(message, dict):
        return content_json_text(message.get("content") or [])
    parts = []
    for block in getattr(message, "content", None) or []:
        kind = getattr(block, "type", None)
        if kind == "text":
            parts.append(block.text)
        elif kind == "tool_use":
            parts.append(json.dumps({"tool": block.name, "input": block.input}, sort_keys=True))
    return "\n".join(parts)


USAGE_FIELDS = ("input_tokens", "output_tokens", "cache_creation_input_tokens",
                "cache_read_input_tokens")


def _usage(message: Any) -> Any:
    return message.get("usage") if isinstance(message, dict) else getattr(message, "usage", None)


def usage_counts(usage: Any) -> dict[str, int]:
    """A ``usage`` (SDK object or JSON) by field; a missing or malformed count is 0."""
    if usage is None:
        return dict.fromkeys(USAGE_FIELDS, 0)
    get = usage.get if isinstance(usage, dict) else (lambda name: getattr(usage, name, None))
    out = {}
    for name in USAGE_FIELDS:
        value = get(name)
        out[name] = value if isinstance(value, int) and value > 0 else 0
    return out


def snapshot_of(message: Any) -> str | None:
    """The model snapshot that answered (the Message's ``model`` field), an SDK object or its JSON."""
    model = message.get("model") if isinstance(message, dict) else getattr(message, "model", None)
    return model if isinstance(model, str) and model else None


def usage_of(message: Any) -> tuple[int | None, int | None]:
    """(input tokens, output tokens) of a Message, an SDK object or its JSON."""
    usage = _usage(message)
    if usage is None:
        return None, None
    if isinstance(usage, dict):
        return usage.get("input_tokens"), usage.get("output_tokens")
    return getattr(usage, "input_tokens", None), getattr(usage, "output_tokens", None)


def cache_tokens_of(message: Any) -> tuple[int, int]:
    """(cache-write tokens, cache-read tokens) of a Message, an SDK object or its JSON; 0 if absent."""
    counts = usage_counts(_usage(message))
    return counts["cache_creation_input_tokens"], counts["cache_read_input_tokens"]


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


_DECODER = json.JSONDecoder()


def body_usage(body: bytes) -> dict[str, Any] | None:
    """The ``usage`` of a Messages API answer: read from its last top-level key (where the API puts
    it) without parsing the whole answer, else from the whole answer."""
    at = body.rfind(b'"usage"')
    start = body.find(b"{", at) if at >= 0 else -1
    if start > 0 and body[at + 7:start].strip() == b":":
        try:
            usage, _ = _DECODER.raw_decode(body[start:].decode())
        except ValueError:
            usage = None
        if isinstance(usage, dict) and isinstance(usage.get("input_tokens"), int):
            return usage
    try:
        answer = json.loads(body)
    except ValueError:
        return None
    return answer.get("usage") if isinstance(answer, dict) else None
