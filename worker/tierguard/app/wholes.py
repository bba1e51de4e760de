"""A whole express request read from one ``data_received`` chunk, without uvicorn's parser.

Most calls through a gateway arrive as one chunk holding ``POST /v1/messages HTTP/1.1``, a few
headers and a small body. :func:`whole` reads such a chunk in a few byte operations — the express
lane (:mod:`~tierguard.app.express`) then relays it without the parser's callbacks, the ASGI
scope and uvicorn's request cycle. It is stricter than the parser: anything it does not read
plainly (another method, path or version, a header it cannot read as a token and a value, a
repeated category header or ``content-length``, transfer or content codings, ``expect``,
``upgrade``, a ``connection`` other than ``keep-alive`` or any ``proxy-connection``, a
``content-length`` of more than 18 digits, a body not exactly whole, bytes
pipelined behind it) is left to the parser, as if never looked at.
"""

from __future__ import annotations

from typing import NamedTuple

START = b"POST /v1/messages HTTP/1.1\r\n"
_TCHARS = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_VCHARS = bytes([9, *range(0x20, 0x7F), *range(0x80, 0x100)])  # a field value's (RFC 9110 5.5)
_PARSER_ONLY = frozenset((b"transfer-encoding", b"content-encoding", b"expect", b"upgrade",
                          b"proxy-connection"))  # (llhttp reads its "close" as connection's)
_DIGITS_MAX = 18  # a longer content-length is the parser's (int() refuses past 4,300 digits)


class Whole(NamedTuple):
    """A request read whole: its headers as uvicorn lists them (names lower-cased, values without
    surrounding blanks), its category, its body."""

    headers: list[tuple[bytes, bytes]]
    name: str
    body: bytes


def length(value: bytes) -> int | None:
    """A ``content-length`` value the express lane reads (digits, at most 18 of them), else None."""
    return int(value) if value.isdigit() and len(value) <= _DIGITS_MAX else None


def whole(data: bytes, header: bytes, max_body: int) -> Whole | None:
    """``data`` read as one whole express request naming its category in ``header`` (a lower-case
    name) with a body of at most ``max_body`` bytes; None for anything else."""
    if not data.startswith(START):
        return None
    end = data.find(b"\r\n\r\n", len(START) - 2)
    if end < 0:
        return None
    headers: list[tuple[bytes, bytes]] = []
    name, size = None, None
    for line in data[len(START):end].split(b"\r\n"):
        key, colon, value = line.partition(b":")
        if not colon or not key or key.translate(None, _TCHARS):
            return None
        value = value.strip(b" \t")
        if value.translate(None, _VCHARS):
            return None
        key = key.lower()
        if key == header:
            if name is not None:
                return None
            name = value
        elif key == b"content-length":
            if size is not None or (size := length(value)) is None:  # (twice, or not plain digits)
                return None
        elif key in _PARSER_ONLY or (key == b"connection" and value.lower() != b"keep-alive"):
            return None
        headers.append((key, value))
    if name is None or size is None or size > max_body or len(data) - end - 4 != size:
        return None
    category = name.decode("latin-1").strip()
    return Whole(headers, category, data[end + 4:]) if category else None
