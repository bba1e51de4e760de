"""AWS event-stream frames, the encoding of Bedrock's ``InvokeModelWithResponseStream`` answers.

A frame (``application/vnd.amazon.eventstream``): its total length and its headers' length
(4 bytes each, big-endian), the CRC32 of those 8 bytes, the headers (each: name length in one
byte, name, a type byte, the value), the payload, and the CRC32 of everything before it.
Bedrock sends each Messages stream event as a frame with ``:event-type`` ``chunk`` whose
payload is ``{"bytes": base64(event JSON)}``; an error as ``:message-type`` ``exception``
with ``:exception-type`` and a JSON ``{"message": …}`` payload.

:class:`EventStreamParser` reads them with :class:`tierguard.app.stream.SSEParser`'s
interface: ``feed(chunk)`` returns the decoded events (an exception frame as the API's
``{"type": "error", …}`` event, as the SDK surfaces it), ``overflow`` is set by a frame
longer than ``limit`` *or* one that fails its checks (a CRC, a length) and nothing more is
read. :func:`encode_event` and :func:`encode_exception` write frames (the simulator's side).
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
import zlib
from typing import Any

CONTENT_TYPE = "application/vnd.amazon.eventstream"
PRELUDE = 12  # total length, headers length, prelude CRC
MAX_FRAME = 16 * 1024 * 1024 + 128 * 1024  # the format's own limits: 16 MiB payload, 128 KiB headers
_STRING, _BYTES = 7, 6
# Value sizes of the fixed-size header types (0/1: true/false, 2: byte, 3: short, 4: int,
# 5: long, 8: timestamp, 9: uuid); 6 and 7 carry a 2-byte length.
_FIXED = {0: 0, 1: 0, 2: 1, 3: 2, 4: 4, 5: 8, 8: 8, 9: 16}


class FrameError(ValueError):
    """A frame that fails its checks (CRC, lengths, header types)."""


def encode_frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One frame with string ``headers`` and ``payload``."""
    raw = b"".join(_header(k.encode(), v.encode()) for k, v in headers.items())
    total = PRELUDE + len(raw) + len(payload) + 4
    prelude = struct.pack(">II", total, len(raw))
    head = prelude + struct.pack(">I", zlib.crc32(prelude)) + raw + payload
    return head + struct.pack(">I", zlib.crc32(head))


def _header(name: bytes, value: bytes) -> bytes:
    return struct.pack(">B", len(name)) + name + struct.pack(">BH", _STRING, len(value)) + value


def encode_event(event: dict[str, Any]) -> bytes:
    """A Messages stream event as Bedrock frames it."""
    payload = json.dumps({"bytes": base64.b64encode(json.dumps(event).encode()).decode()}).encode()
    return encode_frame({":event-type": "chunk", ":content-type": "application/json",
                         ":message-type": "event"}, payload)


def encode_exception(kind: str, message: str) -> bytes:
    """An error frame (``kind``: Bedrock's exception name, e.g. ``throttlingException``)."""
    return encode_frame({":exception-type": kind, ":content-type": "application/json",
                         ":message-type": "exception"}, json.dumps({"message": message}).encode())


def decode_headers(raw: bytes) -> dict[str, Any]:
    """A frame's headers (strings decoded; other types as their bytes)."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(raw):
        n = raw[i]
        name, kind = raw[i + 1:i + 1 + n].decode(), raw[i + 1 + n] if i + 1 + n < len(raw) else -1
        i += 2 + n
        if kind in (_STRING, _BYTES):
            (size,), i = struct.unpack(">H", raw[i:i + 2]), i + 2
        elif kind in _FIXED:
            size = _FIXED[kind]
        else:
            raise FrameError(f"unknown header type {kind}")
        if i + size > len(raw):
            raise FrameError("a header runs past the headers' end")
        out[name] = raw[i:i + size].decode() if kind == _STRING else raw[i:i + size]
        i += size
    return out


def decode_frame(frame: bytes) -> tuple[dict[str, Any], bytes]:
    """(headers, payload) of one whole frame; FrameError if it fails its checks."""
    total, head_len, prelude_crc = struct.unpack(">III", frame[:PRELUDE])
    if zlib.crc32(frame[:8]) != prelude_crc:
        raise FrameError("prelude CRC mismatch")
    if len(frame) != total or PRELUDE + head_len + 4 > total:
        raise FrameError("frame lengths do not add up")
    if zlib.crc32(frame[:-4]) != struct.unpack(">I", frame[-4:])[0]:
        raise FrameError("message CRC mismatch")
    headers = decode_headers(frame[PRELUDE:PRELUDE + head_len])
    return headers, frame[PRELUDE + head_len:-4]


def event_of(headers: dict[str, Any], payload: bytes) -> dict[str, Any] | None:
    """The Messages stream event a frame carries (an exception as an ``error`` event), or None."""
    if headers.get(":message-type") == "exception":
        try:
            message = json.loads(payload).get("message", "")
        except (ValueError, AttributeError):
            message = payload.decode("utf-8", "replace")
        return {"type": "error", "error": {"type": headers.get(":exception-type", "api_error"),
                                           "message": message}}
    if headers.get(":event-type") != "chunk":
        return None
    try:
        event = json.loads(base64.b64decode(json.loads(payload)["bytes"], validate=True))
    except (ValueError, KeyError, TypeError, binascii.Error):
        return None
    return event if isinstance(event, dict) else None


class EventStreamParser:
    """Bytes of an event-stream body in, the Messages stream events out (see the module's docstring).

    ``only``: the event types (bytes, as :data:`tierguard.app.stream.USAGE_EVENTS`) returned;
    ``limit``: the longest frame it waits for; ``error``: why decoding stopped, if it did.
    """

    def __init__(self, limit: int | None = None, only: frozenset[bytes] | None = None) -> None:
        self._buffer = bytearray()
        self.limit = MAX_FRAME if limit is None else min(limit, MAX_FRAME)
        self.only = only
        self.overflow = False
        self.error: str | None = None

    def feed(self, chunk: bytes) -> list[dict[str, Any]]:
        if self.overflow:
            return []
        buffer = self._buffer
        buffer += chunk
        events, start = [], 0
        while len(buffer) - start >= PRELUDE:
            total = int.from_bytes(buffer[start:start + 4], "big")
            if total > self.limit or total < PRELUDE + 4:
                return self._stop(events, f"a frame of {total} bytes")
            if len(buffer) - start < total:
                break
            try:
                event = event_of(*decode_frame(bytes(buffer[start:start + total])))
            except (FrameError, struct.error, UnicodeDecodeError) as err:
                return self._stop(events, str(err))
            start += total
            if event is not None and (self.only is None or str(event.get("type")).encode() in self.only):
                events.append(event)
        del buffer[:start]
        return events

    def _stop(self, events: list[dict[str, Any]], why: str) -> list[dict[str, Any]]:
        self.overflow, self.error, self._buffer = True, why, bytearray()
        return events
