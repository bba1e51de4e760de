"""OpenAI-compatible chat (``POST /v1/chat/completions``) in the Messages API's terms: pure functions.

A chat request becomes the *equivalent Messages request* — what the shadow sends — by the rules of
Anthropic's OpenAI SDK compatibility layer:

- ``system`` and ``developer`` messages, wherever they are, are hoisted into ``system``, joined by
  ``"\\n"``; ``user`` and ``assistant`` turns keep their content (a string stays a string); text
  parts become text blocks, ``image_url`` parts image blocks (a ``data:`` URL as base64, an
  ``http(s)`` URL by URL); ``input_audio`` parts are dropped (the API strips them).
- ``assistant.tool_calls`` become ``tool_use`` blocks (``arguments`` parsed as JSON), ``tool``
  messages ``tool_result`` blocks in a user turn; consecutive turns of one role are merged, as the
  Messages API merges them.
- ``max_completion_tokens`` (else ``max_tokens``, else :data:`DEFAULT_MAX_TOKENS`) →
  ``max_tokens``; ``stop`` → ``stop_sequences`` (whitespace-only ones dropped); ``temperature``
  capped at 1; ``top_p``; ``tools`` (functions) → ``tools`` with ``input_schema``; ``tool_choice``
  ``auto|none|required|{function}`` → ``auto|none|any|tool``; ``parallel_tool_calls: false`` →
  ``disable_parallel_tool_use``; ``thinking`` (the SDK's ``extra_body``) as it is.
- Ignored, as the API ignores them: ``response_format``, ``stream_options``, ``logprobs``,
  ``top_logprobs``, ``metadata``, ``user``, ``seed``, ``presence_penalty``, ``frequency_penalty``,
  ``logit_bias``, ``prediction``, ``service_tier``, ``store``, ``audio``, ``modalities``,
  ``reasoning_effort``, names and ``strict``.

A request that cannot be translated — ``n`` other than 1, the legacy ``functions`` /
``function_call`` fields, a ``function`` role, a ``file`` part, a tool call whose arguments are
not a JSON object, a field of the wrong shape — raises :class:`Untranslatable`, naming the field.

An answer (a ``chat.completion``, or its ``chat.completion.chunk`` stream through
:class:`ChatAssembler`) becomes a Messages-shaped answer: ``content`` text then ``tool_use`` blocks,
``stop_reason`` from ``finish_reason``, ``usage`` from ``prompt_tokens`` (less
``prompt_tokens_details.cached_tokens``, which become ``cache_read_input_tokens``) and
``completion_tokens``.
"""

from __future__ import annotations

import json
from typing import Any

from tierguard.app.stream import UNASSEMBLED

DEFAULT_MAX_TOKENS = 4096  # a shadow's max_tokens when the chat request names none
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                "function_call": "tool_use", "content_filter": "refusal"}
_CHOICES = {"auto": {"type": "auto"}, "none": {"type": "none"}, "required": {"type": "any"}}


class Untranslatable(Exception):
    """A chat request with no equivalent Messages request (the message names the field)."""


def messages_request(chat: Any) -> dict[str, Any]:
    """The Messages request equivalent to the chat request ``chat`` (Untranslatable if none)."""
    try:
        return _request(chat)
    except Untranslatable:
        raise
    except Exception as err:  # a shape no rule foresaw: not shadowed, never the caller's error
        raise Untranslatable(f"the request cannot be read ({type(err).__name__})") from None


def _request(chat: Any) -> dict[str, Any]:
    if not isinstance(chat, dict):
        raise Untranslatable("the body is not a JSON object")
    for legacy in ("functions", "function_call"):
        if chat.get(legacy) is not None:
            raise Untranslatable(f"{legacy}: the legacy function-calling fields are not translated")
    if chat.get("n") not in (None, 1):
        raise Untranslatable("n: only n=1 has a Messages equivalent")
    system, turns = _turns(chat.get("messages"))
    body: dict[str, Any] = {"model": chat["model"]} if "model" in chat else {}
    body.update(max_tokens=_max_tokens(chat), messages=turns)
    if system is not None:
        body["system"] = system
    if (stops := _stops(chat.get("stop"))) is not None:
        body["stop_sequences"] = stops
    for name, cap in (("temperature", 1.0), ("top_p", None)):
        if (value := _number(chat, name)) is not None:
            body[name] = min(value, cap) if cap is not None else value
    body.update(_tools(chat))
    if isinstance(chat.get("thinking"), dict):
        body["thinking"] = chat["thinking"]
    if chat.get("stream") is True:
        body["stream"] = True
    return body


def _max_tokens(chat: dict[str, Any]) -> int:
    for name in ("max_completion_tokens", "max_tokens"):
        value = chat.get(name)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int):
                raise Untranslatable(f"{name}: not an integer")
            return value
    return DEFAULT_MAX_TOKENS


def _number(chat: dict[str, Any], name: str) -> float | None:
    value = chat.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Untranslatable(f"{name}: not a number")
    return value


def _stops(stop: Any) -> list[str] | None:
    if stop is None:
        return None
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise Untranslatable("stop: neither a string nor a list of strings")
    kept = [s for s in stops if s.strip()]
    return kept or None


def _turns(messages: Any) -> tuple[str | None, list[dict[str, Any]]]:
    """(the hoisted system text or None, the user/assistant turns) of a chat's ``messages``."""
    if not isinstance(messages, list) or not messages:
        raise Untranslatable("messages: not a non-empty list")
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise Untranslatable(f"{where}: not an object")
        role = message.get("role")
        if role in ("system", "developer"):
            system.append(_text(message.get("content"), f"{where}.content"))
            continue
        if role not in _TURNS:
            raise Untranslatable(f"{where}.role: {role!r} is not translated")
        _add(turns, "assistant" if role == "assistant" else "user", _TURNS[role](message, where))
    return ("\n".join(system) if system else None), turns


def _add(turns: list[dict[str, Any]], role: str, content: str | list[dict[str, Any]]) -> None:
    """Append a turn, merged into the previous one when it has the same role."""
    if turns and turns[-1]["role"] == role:
        turns[-1]["content"] = _blocks(turns[-1]["content"]) + _blocks(content)
    else:
        turns.append({"role": role, "content": content})


def _blocks(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def _text(content: Any, where: str) -> str:
    """The text of a string or a list of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "\n".join(_string(p.get("text"), f"{where}[].text") for p in content)
    raise Untranslatable(f"{where}: neither a string nor a list of text parts")


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise Untranslatable(f"{where}: not a string")
    return value


def _user_content(content: Any, where: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise Untranslatable(f"{where}: neither a string nor a list of parts")
    blocks = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            blocks.append({"type": "text", "text": _string(part.get("text"), f"{where}[{j}].text")})
        elif kind == "image_url":
            blocks.append(_image(part.get("image_url"), f"{where}[{j}].image_url"))
        elif kind != "input_audio":  # audio is stripped, as the API strips it
            raise Untranslatable(f"{where}[{j}].type: {kind!r} parts are not translated")
    if not blocks:
        raise Untranslatable(f"{where}: nothing but audio")
    return blocks


def _image(image: Any, where: str) -> dict[str, Any]:
    url = _string(image.get("url") if isinstance(image, dict) else None, f"{where}.url")
    if url.startswith("data:"):
        head, comma, data = url.partition(",")
        media, _, encoding = head[5:].partition(";")
        if not comma or encoding != "base64" or not media:
            raise Untranslatable(f"{where}.url: a data URL that is not base64 with a media type")
        return {"type": "image", "source": {"type": "base64", "media_type": media, "data": data}}
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise Untranslatable(f"{where}.url: neither a data URL nor an http(s) URL")


def _assistant_content(message: dict[str, Any], where: str) -> str | list[dict[str, Any]]:
    content, calls = message.get("content"), message.get("tool_calls")
    if not calls:
        if content is None:
            raise Untranslatable(f"{where}: an assistant turn with neither content nor tool_calls")
        return _assistant_text(content, f"{where}.content")
    if not isinstance(calls, list):
        raise Untranslatable(f"{where}.tool_calls: not a list")
    text = _assistant_text(content, f"{where}.content") if content is not None else ""
    blocks = _blocks(text) if text else []
    return blocks + [_tool_use(call, f"{where}.tool_calls[{k}]") for k, call in enumerate(calls)]


def _assistant_text(content: Any, where: str) -> str:
    if isinstance(content, list):  # text and refusal parts
        return "".join(_string(p.get("text") if p.get("type") == "text" else p.get("refusal"),
                               f"{where}[]") for p in content)
    return _string(content, where)


def _tool_use(call: Any, where: str) -> dict[str, Any]:
    if not isinstance(call, dict) or call.get("type", "function") != "function":
        raise Untranslatable(f"{where}: only function tool calls are translated")
    function = call.get("function") or {}
    raw = function.get("arguments") or "{}"
    try:
        arguments = json.loads(_string(raw, f"{where}.function.arguments"))
    except ValueError:
        arguments = None
    if not isinstance(arguments, dict):
        raise Untranslatable(f"{where}.function.arguments: not a JSON object")
    return {"type": "tool_use", "id": _string(call.get("id"), f"{where}.id"),
            "name": _string(function.get("name"), f"{where}.function.name"), "input": arguments}


def _tool_results(message: dict[str, Any], where: str) -> list[dict[str, Any]]:
    call_id = _string(message.get("tool_call_id"), f"{where}.tool_call_id")
    return [{"type": "tool_result", "tool_use_id": call_id,
             "content": _text(message.get("content"), f"{where}.content")}]


# A chat turn's content as a Messages turn's, by role (a tool result goes in a user turn).
_TURNS = {"user": lambda message, where: _user_content(message.get("content"), f"{where}.content"),
          "assistant": _assistant_content, "tool": _tool_results}


def _tools(chat: dict[str, Any]) -> dict[str, Any]:
    """``tools`` and ``tool_choice`` of the Messages request (either may be absent)."""
    out: dict[str, Any] = {}
    tools = chat.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise Untranslatable("tools: not a list")
        out["tools"] = [_tool(tool, f"tools[{i}]") for i, tool in enumerate(tools)]
    choice = _choice(chat.get("tool_choice"))
    if chat.get("parallel_tool_calls") is False and tools and (choice or {}).get("type") != "none":
        choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
    if choice is not None:
        out["tool_choice"] = choice
    return out


def _tool(tool: Any, where: str) -> dict[str, Any]:
    if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"),
                                                                                       dict):
        raise Untranslatable(f"{where}: only function tools are translated")
    function = tool["function"]
    out: dict[str, Any] = {"name": _string(function.get("name"), f"{where}.function.name")}
    if function.get("description") is not None:
        out["description"] = _string(function["description"], f"{where}.function.description")
    out["input_schema"] = function.get("parameters") or {"type": "object", "properties": {}}
    return out


def _choice(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if isinstance(choice, str) and choice in _CHOICES:
        return dict(_CHOICES[choice])
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = (choice.get("function") or {}).get("name")
        return {"type": "tool", "name": _string(name, "tool_choice.function.name")}
    raise Untranslatable("tool_choice: neither auto, none, required nor a function")


# --- answers -----------------------------------------------------------------------------------


def messages_usage(usage: Any) -> dict[str, int] | None:
    """A chat ``usage`` as the Messages API's (None when there is none)."""
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    cached = cached if isinstance(cached, int) and cached > 0 else 0
    out = {"input_tokens": max(0, prompt - cached) if isinstance(prompt, int) else 0,
           "output_tokens": completion if isinstance(completion, int) else 0}
    if cached:
        out["cache_read_input_tokens"] = cached
    return out


def answer_blocks(text: Any, calls: list[tuple[Any, Any, Any]]) -> list[dict[str, Any]]:
    """Content blocks from an answer's text and its tool calls ``(id, name, arguments JSON)``."""
    blocks: list[dict[str, Any]] = [{"type": "text", "text": text}] if isinstance(text, str) and text else []
    for call_id, name, raw in calls:
        try:
            arguments = json.loads(raw) if raw else {}
        except (TypeError, ValueError):
            arguments = {"_unparsed": raw}
        blocks.append({"type": "tool_use", "id": call_id, "name": name, "input": arguments})
    return blocks


def messages_answer(completion: Any) -> dict[str, Any] | None:
    """A ``chat.completion`` as a Messages-shaped answer (None if it has no choice to read)."""
    choices = completion.get("choices") if isinstance(completion, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    message = choices[0].get("message")
    message = message if isinstance(message, dict) else {}
    calls = [_call(c) for c in message.get("tool_calls") or [] if isinstance(c, dict)]
    return {"type": "message", "id": completion.get("id"), "role": "assistant",
            "model": completion.get("model"), "content": answer_blocks(message.get("content"), calls),
            "stop_reason": STOP_REASONS.get(str(choices[0].get("finish_reason"))),
            "usage": messages_usage(completion.get("usage"))}


def _call(call: dict[str, Any]) -> tuple[Any, Any, Any]:
    function = call.get("function")
    function = function if isinstance(function, dict) else {}
    return call.get("id"), function.get("name"), function.get("arguments")


class ChatAssembler:
    """Feed it the JSON of every ``chat.completion.chunk`` of one stream; ``message()`` is the
    Messages-shaped answer. Holds at most ``limit`` characters of content: past it, only the usage
    (the answer then carries the unassembled mark and is never shadowed). ``usage_only``: the usage
    alone is read."""

    def __init__(self, limit: int, usage_only: bool = False) -> None:
        self.limit, self.usage_only = limit, usage_only
        self.texts: list[str] = []
        self.calls: dict[Any, list[Any]] = {}  # index -> [id, name, [argument pieces]]
        self.size = 0
        self.too_long = False
        self.usage: Any = None
        self.model: Any = None
        self.finish: Any = None

    def feed(self, chunk: dict[str, Any]) -> None:
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        if self.usage_only or self.too_long:
            return
        self.model = self.model or chunk.get("model")
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            if isinstance(choice.get("delta"), dict):
                self._delta(choice["delta"])
            self.finish = choice.get("finish_reason") or self.finish

    def _delta(self, delta: dict[str, Any]) -> None:
        if isinstance(delta.get("content"), str):
            self._keep(self.texts, delta["content"])
        for call in delta.get("tool_calls") or []:
            if not isinstance(call, dict):
                continue
            entry = self.calls.setdefault(call.get("index"), [None, None, []])
            function: dict[str, Any] = call["function"] if isinstance(call.get("function"), dict) else {}
            entry[0] = call.get("id") or entry[0]
            entry[1] = function.get("name") or entry[1]
            if isinstance(function.get("arguments"), str):
                self._keep(entry[2], function["arguments"])

    def _keep(self, parts: list[str], piece: str) -> None:
        self.size += len(piece)
        if self.size > self.limit:
            self.give_up()
        else:
            parts.append(piece)

    def give_up(self) -> None:
        """Keep no more content (too long to shadow); the usage is still read."""
        self.too_long = True
        self.texts, self.calls = [], {}

    def message(self) -> dict[str, Any]:
        usage = messages_usage(self.usage)
        if self.usage_only:
            return {"usage": usage}
        if self.too_long:
            return {"type": "message", "model": self.model, "content": [], "usage": usage, UNASSEMBLED: True}
        calls = [(c[0], c[1], "".join(c[2])) for c in self.calls.values()]  # in the order they came
        return {"type": "message", "role": "assistant", "model": self.model,
                "content": answer_blocks("".join(self.texts), calls),
                "stop_reason": STOP_REASONS.get(str(self.finish)), "usage": usage}
