"""Watching a streamed answer on the side: server-sent events in, the final message out.

:class:`Assembler` takes Messages API stream events — JSON dicts (the gateway) or
the SDK's event objects (the wrapper) — and builds the message they describe:
its content blocks (text, tool calls with their input) and its usage. Only
sampled streams are watched; the caller's events are never held back.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

from tierguard.contract.messages import USAGE_FIELDS


def _get(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)




class Assembler:
    """Feed it every event of one stream; ``feed`` is true once, at ``message_stop``."""

    def __init__(self) -> None:
        self.blocks: dict[int, dict[str, Any]] = {}
        self.partial_json: dict[int, list[str]] = {}
        self.usage: dict[str, int] = {}
        self.model: str | None = None
        self.done = False

    def feed(self, event: Any) -> bool:
        kind = _get(event, "type")
        if kind == "content_block_delta":
            index, delta = _get(event, "index"), _get(event, "delta")
            block = self.blocks.get(index)
            dkind = _get(delta, "type")
            if block is None:
                return False
            if dkind == "text_delta":
                block["text"] = block.get("text", "") + (_get(delta, "text") or "")
            elif dkind == "input_json_delta":
                self.partial_json.setdefault(index, []).append(_get(delta, "partial_json") or "")
        elif kind == "content_block_start":
            block = _get(event, "content_block")
            btype = _get(block, "type")
            entry: dict[str, Any] = {"type": btype}
            if btype == "text":
                entry["text"] = _get(block, "text") or ""
            elif btype in ("tool_use", "server_tool_use"):
                entry.update(name=_get(block, "name"), input=_get(block, "input") or {})
            self.blocks[_get(event, "index")] = entry
        elif kind == "message_start":
            message = _get(event, "message")
            self.model = _get(message, "model")
            self._usage(_get(message, "usage"))
        elif kind == "message_delta":
            self._usage(_get(event, "usage"))  # cumulative counts
        elif kind == "message_stop" and not self.done:
            self.done = True
            return True
        return False

    def _usage(self, usage: Any) -> None:
        if usage is None:
            return
        for name in USAGE_FIELDS:
            value = _get(usage, name)
            if isinstance(value, int):
                self.usage[name] = value

    def message(self) -> dict[str, Any]:
        """The assembled message as the Messages API's JSON (content and usage)."""
        content = []
        for index in sorted(self.blocks):
            block = dict(self.blocks[index])
            if index in self.partial_json:
                raw = "".join(self.partial_json[index])
                try:
                    block["input"] = json.loads(raw) if raw else {}
                except ValueError:
                    block["input"] = {"_unparsed": raw}
            content.append(block)
        return {"type": "message", "model": self.model, "content": content, "usage": dict(self.usage)}


class SSEParser:
    """Bytes of a ``text/event-stream`` body in, the JSON ``data`` of each complete event out."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> Iterator[dict[str, Any]]:
        self._buffer += chunk.replace(b"\r\n", b"\n")
        while b"\n\n" in self._buffer:
            raw, self._buffer = self._buffer.split(b"\n\n", 1)
            data = [line[5:].lstrip() for line in raw.split(b"\n") if line.startswith(b"data:")]
            if not data:
                continue
            try:
                event = json.loads(b"\n".join(data))
            except ValueError:
                continue
            if isinstance(event, dict):
                yield event


class UsageOnly(Assembler):
    """An :class:`Assembler` that keeps only the usage (the message is ``{"usage": …}``): what an
    unsampled stream needs for its tokens, at a few comparisons per event."""

    def feed(self, event: Any) -> bool:
        kind = _get(event, "type")
        if kind == "message_delta":
            self._usage(_get(event, "usage"))
        elif kind == "message_start":
            self._usage(_get(_get(event, "message"), "usage"))
        elif kind == "message_stop" and not self.done:
            self.done = True
            return True
        return False

    def message(self) -> dict[str, Any]:
        return {"usage": dict(self.usage)}


def watched(events: Iterator[Any], on_message: Callable[[dict[str, Any]], None],
            assembler: Assembler | None = None) -> Iterator[Any]:
    """Yield ``events`` unchanged; at ``message_stop`` hand the assembled message to ``on_message``.

    A stream the caller abandons before ``message_stop`` hands nothing over.
    """
    assembler = assembler or Assembler()
    for event in events:
        try:
            if assembler.feed(event):
                on_message(assembler.message())
        except Exception:  # watching must never break the caller's stream
            assembler = _Ignore()
        yield event


async def awatched(events: Any, on_message: Callable[[dict[str, Any]], None],
                   assembler: Assembler | None = None) -> Any:
    """:func:`watched` for an async iterator."""
    assembler = assembler or Assembler()
    async for event in events:
        try:
            if assembler.feed(event):
                on_message(assembler.message())
        except Exception:
            assembler = _Ignore()
        yield event


class _Ignore(Assembler):
    def feed(self, event: Any) -> bool:
        return False


_MANAGER_REQUEST = ("_MessageStreamManager__api_request", "_AsyncMessageStreamManager__api_request")


def watch_sdk_stream(stream: Any, on_message: Callable[[dict[str, Any]], None],
                     usage_only: bool = False) -> Any:
    """Watch the events of the SDK's own ``Stream``/``AsyncStream`` as the caller reads them."""
    inner = stream._iterator  # the SDK's cached generator over the parsed events
    wrap = awatched if hasattr(inner, "__anext__") else watched
    stream.__dict__["_iterator"] = wrap(inner, on_message, UsageOnly() if usage_only else Assembler())
    return stream


def watch_sdk_manager(manager: Any, on_message: Callable[[dict[str, Any]], None],
                      usage_only: bool = False) -> bool:
    """Watch the stream a ``messages.stream(...)`` manager opens; False if this SDK hides it."""
    name = next((n for n in _MANAGER_REQUEST if hasattr(manager, n)), None)
    if name is None:
        return False
    request = getattr(manager, name)
    if name.startswith("_Async"):  # an awaitable, awaited once at ``__aenter__``
        async def opened_async() -> Any:
            return watch_sdk_stream(await request, on_message, usage_only)

        setattr(manager, name, opened_async())
    else:
        def opened() -> Any:
            return watch_sdk_stream(request(), on_message, usage_only)

        setattr(manager, name, opened)
    return True
