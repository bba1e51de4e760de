"""What a model can take: context and output limits, and a cheap estimate of a request's size.

The estimate runs on the production side before every routed call. A request of
text alone is read by lengths only (no tokenizer, no copies): ⌈characters of text
in ``system``, ``messages`` and ``tools`` ÷ 3.5⌉. Claude's tokenizer averages
3.5–4 characters per token on English text, so dividing by 3.5 errs toward guarding.
Attachments are estimated from what they are (Anthropic's vision and PDF docs):

- An image: width × height ÷ 750 tokens after the API's resize (long edge at most
  1,568 px), at most 1,600 per image, the size the API scales larger images down
  to. The dimensions come from the header (PNG, JPEG, GIF, WebP), decoding a few
  bytes of the base64, never the whole image: 20 MB of pixels still cost at most
  1,600 tokens. An image whose header cannot be read, or given by URL or file id,
  counts 1,600 (an upper bound).
- A PDF: 3,000 tokens per page. The docs give 1,500–3,000 text tokens per page
  plus the page as an image; published measurements come to 2,100–2,500 per text
  page in all, so 3,000 covers dense pages while a 200K model still takes 66
  pages. Pages are the ``/Type /Page`` objects of the decoded bytes
  (``/Type/Page`` and other spacings too, inside compressed object streams as
  well), else the largest ``/Count``; a PDF saved with incremental updates may
  count a page once per revision, which errs high. Decoding costs about 60 ms
  per 30 MB; ``too_big`` takes an ``Estimate`` so that it is done once per request.
  The API takes at most 100 pages per request when the context is under 1M
  tokens (600 otherwise): more is too big whatever the tokens.
- A plain-text document: by length, as text; a content document: by its blocks.
- Unsure: a document whose size cannot be known here (by URL or file id, or a PDF
  whose pages cannot be found) counts as ``UNSURE_PAGES`` (100) pages, 300,000
  tokens: too big for a 200K model, so the request goes to a rung with a 1M
  context, which has room for it. ``Estimate.unsure`` counts them and ``too_big``
  says so in its reason.
"""

from __future__ import annotations

import binascii
import math
import re
import zlib
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

CHARS_PER_TOKEN = 3.5
IMAGE_TOKENS_MAX = 1600  # one image, after the API's resize
IMAGE_LONG_EDGE = 1568
PIXELS_PER_TOKEN = 750
TOKENS_PER_PDF_PAGE = 3000
UNSURE_PAGES = 100  # pages assumed for a document of unknown size
LARGE_CONTEXT = 1_000_000
PDF_PAGES_MAX = 100  # per request, for a context under LARGE_CONTEXT
PDF_PAGES_MAX_LARGE = 600
INFLATE_MAX = 32 << 20  # bytes inflated from a PDF's compressed object streams, in all
OBJECT_STREAMS_MAX = 10_000  # object streams looked at, per PDF

# Defaults per model family (a policy's ``limits`` may override any model by name).
FAMILY_LIMITS: dict[str, tuple[int, int]] = {
    "claude-haiku": (200_000, 64_000),
    "claude-sonnet": (1_000_000, 64_000),
    "claude-opus": (1_000_000, 128_000),
}


class Estimate(NamedTuple):
    """A request's estimated input: tokens, PDF pages, documents of unknown size among them."""
    tokens: int
    pages: int = 0  # an unsure document's assumed UNSURE_PAGES included
    unsure: int = 0


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


def _text(request: dict[str, Any]) -> tuple[int, int]:
    """(tokens of text, attachments) in the request: the whole estimate of most requests."""
    chars, attachments = _text_chars(request)
    return math.ceil(chars / CHARS_PER_TOKEN), attachments


def _text_chars(request: dict[str, Any]) -> tuple[int, int]:
    """(characters of text, attachments) in the request."""
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
    return chars, attachments


def fits(limits: tuple[int, int], request: dict[str, Any]) -> bool:
    """True when ``request`` is text alone and fits ``limits`` (``too_big`` would find nothing): the
    hot path's check, one pass over the lengths; False when it does not fit or has attachments
    (then ask :func:`too_big`)."""
    context, output = limits
    max_tokens = request.get("max_tokens")
    if not isinstance(max_tokens, int):
        max_tokens = 0
    elif max_tokens > output:
        return False
    chars, attachments = _text_chars(request)
    # ⌈chars ÷ 3.5⌉ + max_tokens ≤ context, without rounding: the same verdict as too_big's
    return not attachments and chars <= (context - max_tokens) * CHARS_PER_TOKEN


def estimate(request: dict[str, Any]) -> Estimate:
    """The request's input estimate (see the module's docstring)."""
    tokens, attachments = _text(request)
    return _with_attachments(request, tokens) if attachments else Estimate(tokens)


def _with_attachments(request: dict[str, Any], text_tokens: int) -> Estimate:
    more = _attachments((request.get("system"), request.get("messages"), request.get("tools")))
    return Estimate(text_tokens + more.tokens, more.pages, more.unsure)


def estimate_input_tokens(request: dict[str, Any]) -> int:
    return estimate(request).tokens


def _blocks(value: Any) -> Iterator[dict[str, Any]]:
    """The image and document blocks in a request part (not those inside a document)."""
    if isinstance(value, dict):
        if value.get("type") in ("image", "document"):
            yield value
            return
        value = value.values()
    elif not isinstance(value, (list, tuple)):
        return
    for item in value:
        yield from _blocks(item)


def _attachments(value: Any) -> Estimate:
    tokens = pages = unsure = 0
    for block in _blocks(value):
        if block["type"] == "image":
            tokens += image_tokens(block.get("source"))
        else:
            t, p, u = _document(block)
            tokens, pages, unsure = tokens + t, pages + p, unsure + u
    return Estimate(tokens, pages, unsure)


def _text_tokens(text: Any) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN) if isinstance(text, str) else 0


def _document(block: dict[str, Any]) -> Estimate:
    """A document block: a PDF by its pages, text by its length, unknown as UNSURE_PAGES pages."""
    around = _text_tokens(block.get("title")) + _text_tokens(block.get("context"))
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "text":
        return Estimate(around + _text_tokens(source.get("data")))
    if kind == "content":
        content = source.get("content")
        inner = _attachments(content)
        return Estimate(around + math.ceil(_chars(content)[0] / CHARS_PER_TOKEN) + inner.tokens,
                        inner.pages, inner.unsure)
    pages = pdf_pages(source.get("data")) if kind == "base64" else None
    if pages is None:
        return Estimate(around + UNSURE_PAGES * TOKENS_PER_PDF_PAGE, UNSURE_PAGES, 1)
    return Estimate(around + pages * TOKENS_PER_PDF_PAGE, pages)


# Images ---------------------------------------------------------------------------------------


def _b64_reader(data: str) -> Callable[[int, int], bytes]:
    """read(start, n): bytes start..start+n of the decoded ``data``, decoding only their
    4-character groups (raises binascii.Error or ValueError on bad base64)."""
    def read(start: int, n: int) -> bytes:
        first = start // 3 * 4
        raw = binascii.a2b_base64(data[first:-(-(start + n) // 3) * 4])
        skip = start - first // 4 * 3
        return raw[skip:skip + n]
    return read


def image_tokens(source: Any) -> int:
    """An image's tokens: from its pixels when its header can be read, else the cap."""
    data = source.get("data") if isinstance(source, dict) and source.get("type") == "base64" else None
    if not isinstance(data, str):
        return IMAGE_TOKENS_MAX
    try:
        size = image_size(_b64_reader(data))
    except (binascii.Error, ValueError):
        size = None
    if size is None or min(size) <= 0:
        return IMAGE_TOKENS_MAX
    width, height = size
    scale = min(1.0, IMAGE_LONG_EDGE / max(width, height))
    return min(math.ceil(width * height * scale * scale / PIXELS_PER_TOKEN), IMAGE_TOKENS_MAX)


def image_size(read: Callable[[int, int], bytes]) -> tuple[int, int] | None:
    """(width, height) from a PNG, GIF, WebP or JPEG header, else None."""
    head = read(0, 30)
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR" and len(head) >= 24:
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    if head[:6] in (b"GIF87a", b"GIF89a") and len(head) >= 10:
        return int.from_bytes(head[6:8], "little"), int.from_bytes(head[8:10], "little")
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP" and len(head) >= 30:
        return _webp_size(head)
    if head[:2] == b"\xff\xd8":
        return _jpeg_size(read)
    return None


def _webp_size(head: bytes) -> tuple[int, int] | None:
    chunk = head[12:16]
    if chunk == b"VP8X":  # extended: the canvas, 24 bits each, minus one
        return int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1
    if chunk == b"VP8L" and head[20] == 0x2F:  # lossless: 14 bits each, minus one
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and head[23:26] == b"\x9d\x01\x2a":  # lossy: after the start code
        return (int.from_bytes(head[26:28], "little") & 0x3FFF,
                int.from_bytes(head[28:30], "little") & 0x3FFF)
    return None


_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_size(read: Callable[[int, int], bytes]) -> tuple[int, int] | None:
    """Walk the segments (EXIF and ICC ones skipped by their lengths) to a start-of-frame."""
    pos = 2
    for _ in range(1024):
        seg = read(pos, 9)
        if len(seg) < 4 or seg[0] != 0xFF:
            return None
        marker = seg[1]
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker in _JPEG_SOF:
            return (int.from_bytes(seg[7:9], "big"), int.from_bytes(seg[5:7], "big")) \
                if len(seg) == 9 else None
        elif marker in (0xDA, 0xD9):  # the scan (or the end) before any frame header
            return None
        elif marker == 0x01 or 0xD0 <= marker <= 0xD7:  # no length
            pos += 2
        else:
            pos += 2 + int.from_bytes(seg[2:4], "big")
    return None


# PDFs -----------------------------------------------------------------------------------------

_PAGE_OR_OBJSTM = re.compile(rb"/Type\s*/(Page|ObjStm)(?![A-Za-z0-9])")
_COUNT = re.compile(rb"/Count\s+(\d+)")


def pdf_pages(data: Any) -> int | None:
    """A base64 PDF's pages: its page objects (compressed object streams included), else the
    largest ``/Count`` (the page tree's root), else None."""
    if not isinstance(data, str):
        return None
    try:
        pdf = binascii.a2b_base64(data)
    except (binascii.Error, ValueError):
        return None
    pages, streams = _page_objects(pdf)
    inflated = _object_streams(pdf, streams)
    pages += sum(_page_objects(text)[0] for text in inflated)
    if pages:
        return pages
    counts = [int(n) for text in (pdf, *inflated) for n in _COUNT.findall(text)]
    return max(counts, default=0) or None


def _page_objects(pdf: bytes) -> tuple[int, list[int]]:
    """(``/Type /Page`` objects, where each ``/Type /ObjStm`` ends) in ``pdf``."""
    pages, streams = 0, []
    for match in _PAGE_OR_OBJSTM.finditer(pdf):
        if match[1] == b"Page":
            pages += 1
        else:
            streams.append(match.end())
    return pages, streams


def _object_streams(pdf: bytes, starts: list[int]) -> list[bytes]:
    """The inflated object streams whose dictionaries end near ``starts`` (PDF 1.5+ keeps page
    objects in them), at most INFLATE_MAX bytes from OBJECT_STREAMS_MAX streams; streams that do
    not inflate are left out."""
    out: list[bytes] = []
    budget, view = INFLATE_MAX, memoryview(pdf)
    for at in starts[:OBJECT_STREAMS_MAX]:
        begin = pdf.find(b"stream", at, at + 4096)
        if begin < 0 or budget <= 0:
            continue
        begin += 6 + (2 if pdf[begin + 6:begin + 8] == b"\r\n" else 1)
        inflater, text = zlib.decompressobj(), bytearray()
        try:
            while not inflater.eof and begin < len(pdf) and len(text) < budget:
                text += inflater.decompress(view[begin:begin + 65536], budget - len(text))
                if inflater.unconsumed_tail:
                    break
                begin += 65536
        except zlib.error:
            continue
        budget -= len(text)
        out.append(bytes(text))
    return out


# Limits ---------------------------------------------------------------------------------------


def too_big(limits: tuple[int, int] | None, request: dict[str, Any],
            estimated: Estimate | None = None) -> str | None:
    """Why ``request`` exceeds ``limits`` (context, output), or None when it fits.

    ``estimated`` is ``estimate(request)`` when the caller has it (a request with a large PDF
    checked against several rungs is then decoded once)."""
    if limits is None:
        return None
    context, output = limits
    max_tokens = request.get("max_tokens")
    if isinstance(max_tokens, int) and max_tokens > output:
        return f"max_tokens {max_tokens:,} > the model's {output:,} output tokens"
    if estimated is None:
        tokens, attachments = _text(request)
        if attachments:  # text alone (the common case): nothing more to read or build
            estimated = _with_attachments(request, tokens)
    if estimated is not None:
        tokens = estimated.tokens
        most = PDF_PAGES_MAX_LARGE if context >= LARGE_CONTEXT else PDF_PAGES_MAX
        if estimated.pages > most:
            return (f"{estimated.pages:,} PDF pages > the {most} a model with its context takes"
                    f"{_unsure(estimated)}")
    if tokens + (max_tokens if isinstance(max_tokens, int) else 0) > context:
        note = _unsure(estimated) if estimated is not None else ""
        return f"about {tokens:,} input tokens (estimated{note}) do not fit its {context:,}-token context"
    return None


def _unsure(estimated: Estimate) -> str:
    return (f"; {estimated.unsure} document(s) of unknown size counted as {UNSURE_PAGES} pages each"
            if estimated.unsure else "")
