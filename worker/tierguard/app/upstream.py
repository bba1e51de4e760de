"""What the gateway sends upstream: request bodies as they are to go, and the pooled client.

Bodies: :func:`parse_request` decodes a ``gzip``/``deflate`` body (bounded: past the
limit is :class:`TooLarge`) and reads its top-level JSON object one value (or array
element) at a time, keeping where ``model`` is; :func:`with_model` sets ``model`` in
the caller's own bytes, so non-ASCII text, key order and whitespace go as sent. Before
any of it, :func:`nesting` measures how deep the body's arrays and objects go (a byte scan:
strings dropped, brackets counted, a step at a time), so a body nested past the gateway's
limit is :class:`TooDeep` before ``json`` recurses into it.

The client: requests go through :mod:`~tierguard.app.lean_client`'s lean pool when the upstream is
reached directly (``TIERGUARD_GATEWAY_CLIENT=lean``, the default), else straight to ``httpx2``
transports (no client-level cookie jar, redirects or auth: a proxy must not carry one caller's
state to the next), whose connections are spread over shards of ``SHARD`` each, because the
pool scans every connection it holds on each request. The network is the environment's, as the
anthropic SDK reads it: ``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``ALL_PROXY`` (``NO_PROXY``
exempts hosts) choose the proxy for the upstream URL once, by ``httpx2``'s own rules;
``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` name the CAs trusted (one TLS context for all shards).
"""

from __future__ import annotations

import codecs
import json
import re
import zlib
from itertools import accumulate, count
from operator import sub
from typing import Any, NamedTuple

import httpx2
from httpx2._utils import URLPattern, get_environment_proxies

from tierguard.app import lean_client

SHARD = 16
LEAN = -1  # the "shard" of a request sent by the lean client
OFF_LOOP = 256 * 1024  # bodies above this many bytes are decoded and parsed on a worker thread
QUICK_PARSE = 64 * 1024  # bodies up to this many bytes may be parsed whole at once (_quick)
_WBITS = {"gzip": 31, "x-gzip": 31, "deflate": 15}  # zlib's window bits per content coding
_WS = re.compile(r"[ \t\n\r]*")  # JSON whitespace
_DECODER = json.JSONDecoder()
_ESCAPE = re.compile(rb"\\.", re.S)  # a backslash and the byte it escapes
_OPENS = bytes.maketrans(b"[{]}", b"\x01\x01\x00\x00")  # an opening bracket: 1, a closing one: 0
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = 1 << 18  # bytes scanned at once (the GIL is let go between steps)


class TooLarge(Exception):
    """A request body over the gateway's limit (as sent or decoded)."""


class TooDeep(Exception):
    """A request body whose JSON nests deeper than the gateway's limit."""

    def __init__(self, limit: int):
        super().__init__(f"nested deeper than {limit}")
        self.limit = limit


def environment_proxy(url: str) -> str | None:
    """The proxy URL the environment gives for ``url`` (None: go direct), as httpx2's clients pick it."""
    target = httpx2.URL(url)
    mounts = {URLPattern(key): proxy for key, proxy in get_environment_proxies().items()}
    for pattern in sorted(mounts):  # the most specific pattern first, as in httpx2's clients
        if pattern.matches(target):
            return mounts[pattern]
    return None


class Upstream:
    """The upstream's connection pools. ``client="lean"`` (the default) sends a request whose body
    is at most ``lean_client.MAX_BODY`` through :mod:`~tierguard.app.lean_client` when the upstream
    is reached directly; through a proxy, a larger body, ``HEAD``, or with ``client="httpx2"``,
    through ``httpx2`` transports."""

    def __init__(self, base_url: str, max_connections: int = 1000, timeout: float = 600.0,
                 client: str = "lean"):
        self.base_url = base_url.rstrip("/")
        self.proxy = environment_proxy(self.base_url)
        limits = httpx2.Limits(max_connections=SHARD, max_keepalive_connections=SHARD,
                               keepalive_expiry=lean_client.KEEPALIVE_S)
        tls = httpx2.create_ssl_context(trust_env=True)  # SSL_CERT_FILE / SSL_CERT_DIR
        tls.set_alpn_protocols(["http/1.1"])  # as httpx2's connections set it (no HTTP/2) for both
        self._shards = [httpx2.AsyncHTTPTransport(limits=limits, verify=tls, proxy=self.proxy)
                        for _ in range(max(1, max_connections // SHARD))]
        self._busy = [0] * len(self._shards)
        self._next = 0
        self._timeout = {"connect": 10.0, "read": timeout, "write": timeout, "pool": timeout}
        self.lean: lean_client.Pool | None = None
        if client == "lean" and self.proxy is None:
            self.lean = lean_client.Pool(self.base_url, max_connections, timeout, tls)

    def _pick(self) -> int:
        """The next shard in rotation that has a free connection (else the next one)."""
        n = len(self._shards)
        start = self._next = (self._next + 1) % n
        for i in range(n):
            j = (start + i) % n
            if self._busy[j] < SHARD:
                return j
        return start

    async def send(self, method: str, target: str, headers: list[tuple[bytes, bytes]],
                   body: bytes) -> tuple[httpx2.Response, int]:
        """Send; the response's body is still to be read. Returns it and its shard (see ``done``)."""
        if self.lean is not None and method != "HEAD" and len(body) <= lean_client.MAX_BODY:
            return await self.lean.send(method, target, headers, body), LEAN  # type: ignore[return-value]
        lean_client.checked_target(target)  # as the lean client refuses it
        shard = self._pick()
        request = httpx2.Request(method, self.base_url + target, headers=headers, content=body,
                                 extensions={"timeout": self._timeout})
        self._busy[shard] += 1
        try:
            response = await self._shards[shard].handle_async_request(request)
        except BaseException:
            self._busy[shard] -= 1
            raise
        response.stream = _NotPastItsEnd(response.stream)
        return response, shard

    def done(self, shard: int) -> None:
        if shard != LEAN:
            self._busy[shard] -= 1

    async def aclose(self) -> None:
        if self.lean is not None:
            await self.lean.aclose()
        for transport in self._shards:
            await transport.aclose()


class _NotPastItsEnd(httpx2.AsyncByteStream):
    """An ``httpx2`` answer's body whose connection is closed, not kept alive, when bytes came after
    the answer's end: ``h11`` holds them and would read them as the next request's answer."""

    def __init__(self, stream: Any):
        self.stream = stream
        inner = getattr(getattr(stream, "_httpcore_stream", None), "_stream", None)
        self.connection = getattr(inner, "_connection", None)  # httpcore2's HTTP/1.1 connection

    def __aiter__(self) -> Any:
        return self.stream.__aiter__()

    async def aclose(self) -> None:
        state = getattr(self.connection, "_h11_state", None)
        trailing = state is not None and bool(state.trailing_data[0])
        await self.stream.aclose()
        if trailing:
            await self.connection.aclose()  # type: ignore[union-attr]


def inflate(data: bytes, coding: str, limit: int) -> bytes:
    """``data`` decoded from ``coding`` (gzip, x-gzip, deflate); TooLarge past ``limit`` bytes."""
    if coding not in _WBITS:
        raise ValueError(f"unsupported content coding {coding!r}")
    wbits = _WBITS[coding]
    if coding == "deflate" and (len(data) < 2 or (data[0] * 256 + data[1]) % 31 or data[0] & 15 != 8):
        wbits = -15  # raw deflate, without the zlib header some clients leave out
    out, unpack = bytearray(), zlib.decompressobj(wbits)
    try:
        while True:
            chunk = unpack.decompress(data, min(limit + 1 - len(out), 1 << 20))
            out += chunk
            if len(out) > limit:
                raise TooLarge
            data = unpack.unconsumed_tail
            if unpack.eof and unpack.unused_data and wbits == 31:  # another gzip member
                data, unpack = unpack.unused_data, zlib.decompressobj(wbits)
            elif unpack.eof or not (data or chunk):
                break
    except zlib.error as err:
        raise ValueError(f"the {coding} body cannot be decoded: {err}") from None
    if not unpack.eof:
        raise ValueError(f"the {coding} body is truncated")
    return bytes(out)


class Parsed(NamedTuple):
    """A request body: its bytes (decoded), text, object, and where its top-level ``model`` is."""

    raw: bytes
    text: str
    request: dict[str, Any]
    spans: list[tuple[int, int]]  # character spans of the top-level "model" values
    first: int  # where the object's first key (or its closing brace) is


def parse_request(body: bytes, codings: list[str], limit: int, max_depth: int | None = None) -> Parsed:
    """Decode and parse a Messages API body; ValueError if it is not a JSON object in UTF-8,
    TooDeep if its arrays and objects nest deeper than ``max_depth``."""
    for coding in reversed(codings):
        body = inflate(body, coding, limit)
    if max_depth is not None and nesting(body, max_depth) > max_depth:
        raise TooDeep(max_depth)
    if len(body) <= QUICK_PARSE:
        quick = _quick(body)
        if quick is not None:
            return quick
    decoder, step = codecs.getincrementaldecoder("utf-8")(), 1 << 20
    text = "".join(decoder.decode(body[i:i + step]) for i in range(0, len(body), step))
    text += decoder.decode(b"", final=True)
    request, spans, first = scan_object(text)
    return Parsed(body, text, request, spans, first)


def _quick(body: bytes) -> Parsed | None:
    """A small body that names ``model`` at most once, written plainly (no ``\\u`` escape, no BOM),
    parsed whole by ``json.loads``: what :func:`scan_object` would find; None when it must scan."""
    text = body.decode("utf-8")
    if text.count('"model"') > 1 or "\\u" in text or text.startswith("\ufeff"):
        return None
    request = json.loads(text)
    if not isinstance(request, dict):
        raise ValueError("the body is not a JSON object")
    ws = _WS.match
    first = ws(text, ws(text).end() + 1).end()
    at = text.find('"model"')
    if at < 0:
        return None if "model" in request else Parsed(body, text, request, [], first)
    colon = ws(text, at + 7).end()
    if "model" not in request or not text.startswith(":", colon):
        return None  # "model" in a string or a nested key: the scan tells
    start = ws(text, colon + 1).end()
    value, end = _DECODER.raw_decode(text, start)
    return Parsed(body, text, request, [(start, end)], first) if value == request["model"] else None


def nesting(data: bytes, stop: int | None = None) -> int:
    """How deep ``data``'s JSON arrays and objects nest (brackets inside strings do not count);
    linear, in steps of ``_STEP`` bytes. With ``stop`` the answer only tells whether the depth is
    past it: a body with too few brackets is not scanned, one found past it is scanned no further."""
    if stop is not None and len(data) <= OFF_LOOP and data.count(b"[") + data.count(b"{") <= stop:
        return 0  # too few brackets to nest that deep: not worth a scan
    depth = deepest = 0
    outside, i = True, 0
    while i < len(data):
        j = min(i + _STEP, len(data))
        while j < len(data) and data[j - 1] == 0x5C:  # never end a step inside an escape
            j += 1
        step = data[i:j]
        if b"\\" in step:
            step = _ESCAPE.sub(b"", step)
        parts = step.split(b'"')  # outside and inside strings by turns
        marks = b"".join(parts[0 if outside else 1::2]).translate(_OPENS, _NOT_BRACKETS)
        outside ^= len(parts) % 2 == 0
        if marks:  # the depth after the k-th bracket: depth + 2 * (opening ones so far) - k
            deepest = max(deepest, depth + max(map(sub, map((2).__mul__, accumulate(marks)), count(1))))
            depth += 2 * marks.count(1) - len(marks)
        if stop is not None and deepest > stop:
            break
        i = j
    return deepest


def scan_object(text: str) -> tuple[dict[str, Any], list[tuple[int, int]], int]:
    """``text``'s top-level JSON object as ``json.loads`` reads it, the spans of its ``model``
    values, and where its first key starts; one top-level value or array element at a time."""
    ws = _WS.match
    i = ws(text, 1 if text.startswith("\ufeff") else 0).end()  # a UTF-8 BOM, as json.loads(bytes)
    if not text.startswith("{", i):
        raise ValueError("the body is not a JSON object")
    first = i = ws(text, i + 1).end()
    request: dict[str, Any] = {}
    spans: list[tuple[int, int]] = []
    pairs = 0
    while not text.startswith("}", i):
        if pairs:
            if not text.startswith(",", i):
                raise ValueError(f"expected ',' or '}}' at {i}")
            i = ws(text, i + 1).end()
        if not text.startswith('"', i):
            raise ValueError(f"expected a key at {i}")
        key, i = _DECODER.raw_decode(text, i)
        i = ws(text, i).end()
        if not text.startswith(":", i):
            raise ValueError(f"expected ':' at {i}")
        start = ws(text, i + 1).end()
        request[key], i = _scan_value(text, start)
        if key == "model":
            spans.append((start, i))
        i = ws(text, i).end()
        pairs += 1
    if ws(text, i + 1).end() != len(text):
        raise ValueError("extra data after the JSON object")
    return request, spans, first


def _scan_value(text: str, i: int) -> tuple[Any, int]:
    """One JSON value at ``i`` and where it ends; an array element by element (each a short
    call that holds the GIL, so the event loop gets its turns while a large body is parsed)."""
    if not text.startswith("[", i):
        return _DECODER.raw_decode(text, i)
    ws, items = _WS.match, []
    i = ws(text, i + 1).end()
    while not text.startswith("]", i):
        if items:
            if not text.startswith(",", i):
                raise ValueError(f"expected ',' or ']' at {i}")
            i = ws(text, i + 1).end()
        item, i = _DECODER.raw_decode(text, i)
        items.append(item)
        i = ws(text, i).end()
    return items, i + 1


def with_model(parsed: Parsed, model: str) -> bytes:
    """The body's bytes with its top-level ``model`` set to ``model``, all else as it was."""
    value = json.dumps(model, ensure_ascii=False).encode()
    text, raw = parsed.text, parsed.raw

    def at(i: int) -> int:  # byte offset of character i
        return len(text[:i].encode())

    if not parsed.spans:
        cut = at(parsed.first)
        insert = b'"model": ' + value + (b"" if text.startswith("}", parsed.first) else b", ")
        return raw[:cut] + insert + raw[cut:]
    parts, last = [], 0
    for start, end in parsed.spans:
        a = at(start)
        parts += [raw[last:a], value]
        last = a + len(text[start:end].encode())
    parts.append(raw[last:])
    return b"".join(parts)
