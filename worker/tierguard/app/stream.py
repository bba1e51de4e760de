"""Watching a streamed answer on the side: server-sent events in, the final message out.

:class:`Assembler` takes Messages API stream events — JSON dicts, parsed from the bytes
the gateway relays or the wrapper's tap sees — and builds the message they describe:
its content blocks (text, tool calls with their input) and its usage. Only
sampled streams are watched; the caller's events are never held back.

Both are linear in the stream's length: text and JSON deltas are kept in lists and
joined once, at the end; the SSE parser searches each byte once. An assembler holds at
most ``limit`` characters of content (``TIERGUARD_STREAM_ASSEMBLY_MAX``, 8 MiB, passed by
each caller): past it the content is dropped, only the
usage is kept, and the message it hands over carries ``UNASSEMBLED`` — counted, never
shadowed. The stream itself goes on to the caller untouched.
"""

from __future__ import annotations

import json
from typing import Any

from tierguard.contract.messages import USAGE_FIELDS

UNASSEMBLED = "tierguard_unassembled"  # set in a message too long to assemble: usage only
USAGE_EVENTS = frozenset({b"message_start", b"message_delta", b"message_stop"})
DEFAULT_LIMIT = 8 * 1024 * 1024  # characters; callers pass TIERGUARD_STREAM_ASSEMBLY_MAX


def _get(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


class Assembler:
    """Feed it every event of one stream; ``feed`` is true once, at ``message_stop``."""

    def __init__(self, limit: int | None = None) -> None:
        self.blocks: dict[int, dict[str, Any]] = {}
        self.texts: dict[int, list[str]] = {}
        self.partial_json: dict[int, list[str]] = {}
        self.usage: dict[str, int] = {}
        self.model: str | None = None
        self.done = False
        self.limit = DEFAULT_LIMIT if limit is None else limit
        self.size = 0  # characters of content held
        self.too_long = False

    def feed(self, event: Any) -> bool:
        kind = _get(event, "type")
        if kind == "content_block_delta":
            index, delta = _get(event, "index"), _get(event, "delta")
            dkind = _get(delta, "type")
            if index not in self.blocks:
                return False
            if dkind == "text_delta":
                self._keep(self.texts, index, _get(delta, "text") or "")
            elif dkind == "input_json_delta":
                self._keep(self.partial_json, index, _get(delta, "partial_json") or "")
        elif kind == "content_block_start":
            self._start(_get(event, "index"), _get(event, "content_block"))
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

    def _start(self, index: Any, block: Any) -> None:
        if self.too_long:
            return
        btype = _get(block, "type")
        entry: dict[str, Any] = {"type": btype}
        if btype == "text":
            entry["text"] = _get(block, "text") or ""
            self._grow(len(entry["text"]))
        elif btype in ("tool_use", "server_tool_use"):
            entry.update(name=_get(block, "name"), input=_get(block, "input") or {})
        if not self.too_long:
            self.blocks[index] = entry

    def _keep(self, parts: dict[int, list[str]], index: int, piece: str) -> None:
        self._grow(len(piece))
        if not self.too_long:
            parts.setdefault(index, []).append(piece)

    def _grow(self, n: int) -> None:
        self.size += n
        if self.size > self.limit:
            self.give_up()

    def give_up(self) -> None:
        """Keep no more content (the stream is too long to shadow); the usage is still followed."""
        self.too_long = True
        self.blocks, self.texts, self.partial_json = {}, {}, {}

    def _usage(self, usage: Any) -> None:
        if usage is None:
            return
        for name in USAGE_FIELDS:
            value = _get(usage, name)
            if isinstance(value, int):
                self.usage[name] = value

    def message(self) -> dict[str, Any]:
        """The assembled message as the Messages API's JSON (content and usage); a stream too long
        to assemble gives its usage and ``UNASSEMBLED``, no content."""
        if self.too_long:
            return {"type": "message", "model": self.model, "content": [], "usage": dict(self.usage),
                    UNASSEMBLED: True}
        content = []
        for index in sorted(self.blocks):
            block = dict(self.blocks[index])
            if index in self.texts:
                block["text"] = block.get("text", "") + "".join(self.texts[index])
            if index in self.partial_json:
                raw = "".join(self.partial_json[index])
                try:
                    block["input"] = json.loads(raw) if raw else {}
                except ValueError:
                    block["input"] = {"_unparsed": raw}
            content.append(block)
        return {"type": "message", "model": self.model, "content": content, "usage": dict(self.usage)}


class SSEParser:
    """Bytes of a ``text/event-stream`` body in, the JSON ``data`` of each complete event out.

    ``only``: the event names whose data is decoded (an event without a name always is);
    ``limit``: the longest event it waits for — past it, ``overflow`` and no more events.
    ``ended``: a ``data: [DONE]`` event came (how OpenAI-compatible streams end).
    """

    def __init__(self, limit: int | None = None, only: frozenset[bytes] | None = None) -> None:
        self._buffer = bytearray()
        self._searched = 0  # bytes at the buffer's start already searched for an event's end
        self._cr = False  # the last chunk ended in "\r": its "\n" may open the next one
        self.limit = limit
        self.only = only
        self.overflow = False
        self.ended = False

    def feed(self, chunk: bytes) -> list[dict[str, Any]]:
        if self.overflow:
            return []
        if self._cr:
            chunk = b"\r" + chunk
        self._cr = chunk.endswith(b"\r")
        buffer = self._buffer
        buffer += (chunk[:-1] if self._cr else chunk).replace(b"\r\n", b"\n")
        events, start = [], 0
        while (end := buffer.find(b"\n\n", max(start, self._searched - 1))) >= 0:
            event = self._event(bytes(buffer[start:end]))
            if event is not None:
                events.append(event)
            start = end + 2
        del buffer[:start]
        self._searched = len(buffer)
        if self.limit is not None and len(buffer) > self.limit:
            self.overflow = True
            self._buffer = bytearray()
        return events

    def _event(self, raw: bytes) -> dict[str, Any] | None:
        lines = raw.split(b"\n")
        if self.only is not None:
            name = next((line[6:].strip() for line in lines if line.startswith(b"event:")), None)
            if name is not None and name not in self.only:
                return None
        data = [line[5:].lstrip() for line in lines if line.startswith(b"data:")]
        if not data:
            return None
        if data == [b"[DONE]"]:
            self.ended = True
            return None
        try:
            event = json.loads(b"\n".join(data))
        except ValueError:
            return None
        return event if isinstance(event, dict) else None


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
