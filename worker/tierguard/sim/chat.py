"""The simulator's OpenAI-compatible endpoint, ``POST /v1/chat/completions``, as Anthropic serves it.

A chat request is read as a Messages request — this module's own reading, as the API's
compatibility layer has its own: system and developer messages hoisted into ``system`` (joined by
a newline), user and assistant turns with their text, ``tool`` messages as tool results,
``max_completion_tokens`` or ``max_tokens`` (4,096 when neither) — and answered by the same
scenario logic as ``/v1/messages``, so agreement scenarios hold for both paths. The answer goes
back as a ``chat.completion``, or streamed as ``chat.completion.chunk`` ``data:`` lines ending with
``data: [DONE]``; the usage comes in a last chunk without choices only when
``stream_options.include_usage`` is set, as OpenAI's API sends it.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

CHAT_PATH = "/v1/chat/completions"
ROLES = {"system", "developer", "user", "assistant", "tool"}
FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
          "refusal": "content_filter"}


def chat_problem(body: Any) -> str | None:
    """Why a chat request cannot be answered, or None."""
    if not isinstance(body, dict) or not body.get("model") or not isinstance(body.get("messages"), list) \
            or not body["messages"]:
        return "model and messages are required"
    if body.get("n") not in (None, 1):
        return "n: only 1 is supported"
    for i, message in enumerate(body["messages"]):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            return f"messages[{i}].role: must be one of {sorted(ROLES)}"
    return None


def _texts(content: Any) -> Any:
    """Text content as sent: a string stays one, a list keeps its text parts as text blocks."""
    if isinstance(content, list):
        return [{"type": "text", "text": p.get("text", "")} for p in content
                if isinstance(p, dict) and p.get("type") == "text"]
    return content if content is not None else ""


def as_messages(body: dict[str, Any]) -> dict[str, Any]:
    """The Messages request the simulator answers a (valid) chat request with."""
    system, turns = [], []
    for message in body["messages"]:
        role, content = message["role"], _texts(message.get("content"))
        if role in ("system", "developer"):
            system.append(content if isinstance(content, str) else "\n".join(b["text"] for b in content))
        elif role == "tool":
            turns.append({"role": "user", "content": [{"type": "tool_result", "content": content,
                                                       "tool_use_id": message.get("tool_call_id")}]})
        else:
            turns.append({"role": role, "content": content})
    out = {"model": body["model"], "messages": turns,
           "max_tokens": body.get("max_completion_tokens") or body.get("max_tokens") or 4096}
    if system:
        out["system"] = "\n".join(system)
    return out


def _usage(msg: dict[str, Any]) -> dict[str, int]:
    used = msg["usage"]
    return {"prompt_tokens": used["input_tokens"], "completion_tokens": used["output_tokens"],
            "total_tokens": used["input_tokens"] + used["output_tokens"]}


def _head(msg: dict[str, Any], kind: str) -> dict[str, Any]:
    return {"id": "chatcmpl-" + msg["id"].removeprefix("msg_"), "object": kind, "created": int(time.time()),
            "model": msg["model"]}


def completion(msg: dict[str, Any]) -> dict[str, Any]:
    """A Message (the simulator's answer) as a ``chat.completion``."""
    text = "".join(b.get("text", "") for b in msg["content"] if b.get("type") == "text")
    reply: dict[str, Any] = {"role": "assistant", "content": text or None}
    calls = [{"id": b.get("id") or "call_" + uuid.uuid4().hex[:20], "type": "function",
              "function": {"name": b["name"], "arguments": json.dumps(b.get("input") or {})}}
             for b in msg["content"] if b.get("type") == "tool_use"]
    if calls:
        reply["tool_calls"] = calls
    finish = FINISH.get(msg["stop_reason"], "stop")
    return {**_head(msg, "chat.completion"),
            "choices": [{"index": 0, "message": reply, "finish_reason": finish}], "usage": _usage(msg)}


def chunks(msg: dict[str, Any], chat: dict[str, Any]) -> list[bytes]:
    """A Message's text streamed as ``chat.completion.chunk`` events for the chat request ``chat``."""
    head = _head(msg, "chat.completion.chunk")
    text = "".join(b.get("text", "") for b in msg["content"] if b.get("type") == "text")
    deltas = [{"role": "assistant", "content": ""}] + [{"content": text[i:i + 16]}
                                                       for i in range(0, len(text), 16)]
    events = [{**head, "choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
    events.append({**head, "choices": [{"index": 0, "delta": {},
                                        "finish_reason": FINISH.get(msg["stop_reason"], "stop")}]})
    if (chat.get("stream_options") or {}).get("include_usage"):
        events.append({**head, "choices": [], "usage": _usage(msg)})
    return [b"data: " + json.dumps(e).encode() + b"\n\n" for e in events] + [b"data: [DONE]\n\n"]
