"""What a model can take: context and output limits, and a cheap estimate of a request's size.

The estimate runs on the production side before every routed call, so it reads
lengths only (no tokenizer, no copies): input tokens ≈ ⌈characters of text in
``system``, ``messages`` and ``tools`` ÷ 3.5⌉, plus 1,600 per image or document
block. Claude's tokenizer averages 3.5–4 characters per token on English text,
so dividing by 3.5 errs toward guarding.
"""

from __future__ import annotations

import math
from typing import Any

CHARS_PER_TOKEN = 3.5
TOKENS_PER_ATTACHMENT = 1600

# Defaults per model family (a policy's ``limits`` may override any model by name).
FAMILY_LIMITS: dict[str, tuple[int, int]] = {
    "claude-haiku": (200_000, 64_000),
    "claude-sonnet": (1_000_000, 64_000),
    "claude-opus": (1_000_000, 128_000),
}


def family_limits(model: str) -> tuple[int, int] | None:
    """(context tokens, max output tokens) for a model of a known family, else None."""
    for prefix, limits in FAMILY_LIMITS.items():
        if model.startswith(prefix):
            return limits
    return None


def _chars(value: Any) -> tuple[int, int]:
    """(characters of text, attachments) in a request part."""
    if isinstance(value, str):
        return len(value), 0
    if isinstance(value, dict):
        if value.get("type") in ("image", "document"):
            return 0, 1
        chars = attachments = 0
        for key, item in value.items():
            if key in ("type", "cache_control", "role", "id", "tool_use_id"):
                continue
            c, a = _chars(item)
            chars += c
            attachments += a
        return chars, attachments
    if isinstance(value, (list, tuple)):
        chars = attachments = 0
        for item in value:
            c, a = _chars(item)
            chars += c
            attachments += a
        return chars, attachments
    return (len(str(value)), 0) if isinstance(value, (int, float)) else (0, 0)


def estimate_input_tokens(request: dict[str, Any]) -> int:
    chars = attachments = 0
    system = request.get("system")
    if type(system) is str:  # the common shapes first: this runs before every routed call
        chars += len(system)
    elif system is not None:
        chars, attachments = _chars(system)
    for message in request.get("messages") or ():
        content = message.get("content") if type(message) is dict else message
        if type(content) is str:
            chars += len(content)
        else:
            c, a = _chars(content)
            chars += c
            attachments += a
    if request.get("tools"):
        c, a = _chars(request["tools"])
        chars += c
        attachments += a
    return math.ceil(chars / CHARS_PER_TOKEN) + attachments * TOKENS_PER_ATTACHMENT


def too_big(limits: tuple[int, int] | None, request: dict[str, Any]) -> str | None:
    """Why ``request`` exceeds ``limits`` (context, output), or None when it fits."""
    if limits is None:
        return None
    context, output = limits
    max_tokens = request.get("max_tokens")
    if isinstance(max_tokens, int) and max_tokens > output:
        return f"max_tokens {max_tokens:,} > the model's {output:,} output tokens"
    estimate = estimate_input_tokens(request)
    if estimate + (max_tokens if isinstance(max_tokens, int) else 0) > context:
        return f"about {estimate:,} input tokens (estimated) do not fit its {context:,}-token context"
    return None
