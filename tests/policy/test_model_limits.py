"""The capability guard's estimate of images and documents: from what they are, never by block."""

import base64
import io
import os
import zlib

import pytest
from PIL import Image

from tierguard.policy.model_limits import (
    IMAGE_TOKENS_MAX,
    TOKENS_PER_PDF_PAGE,
    UNSURE_PAGES,
    Estimate,
    _b64_reader,
    estimate,
    estimate_input_tokens,
    image_size,
    image_tokens,
    pdf_pages,
    too_big,
)

HAIKU = (200_000, 64_000)
SONNET = (1_000_000, 64_000)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def pdf(pages: int, page_type: bytes = b"/Type /Page", count: bool = True) -> bytes:
    """A minimal valid PDF: catalog, page tree, ``pages`` empty pages, xref table."""
    kids = b" ".join(b"%d 0 R" % (3 + i) for i in range(pages))
    tree = b"<< /Type /Pages /Kids [%s]%s >>" % (kids, b" /Count %d" % pages if count else b"")
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", tree] + [
        b"<< %s /Parent 2 0 R /MediaBox [0 0 612 792] >>" % page_type] * pages
    return _with_xref(objects)


def _with_xref(objects: list[bytes]) -> bytes:
    out, offsets = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n"), []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def pdf_with_object_stream(pages: int) -> bytes:
    """A PDF 1.5 whose catalog, page tree and pages all sit in one compressed object stream
    (as pdfTeX and others write them): no page object is visible in the file's own bytes."""
    kids = b" ".join(b"%d 0 R" % (3 + i) for i in range(pages))
    bodies = [b"<</Type/Catalog/Pages 2 0 R>>", b"<</Type/Pages/Kids[%s]/Count %d>>" % (kids, pages)] + [
        b"<</Type/Page/Parent 2 0 R/MediaBox[0 0 612 792]>>"] * pages
    header, offset = [], 0
    for number, body in enumerate(bodies, 1):
        header.append(b"%d %d" % (number, offset))
        offset += len(body) + 1
    index = b" ".join(header) + b"\n"
    packed = zlib.compress(index + b"\n".join(bodies) + b"\n")
    stream_no = len(bodies) + 1
    out = bytearray(b"%PDF-1.5\n%\xe2\xe3\xcf\xd3\n")
    at = len(out)
    out += b"%d 0 obj\n<< /Type /ObjStm /N %d /First %d /Filter /FlateDecode /Length %d >>\nstream\n" % (
        stream_no, len(bodies), len(index), len(packed))
    out += packed + b"\nendstream\nendobj\n"
    xref_at = len(out)
    rows = [b"\x00\x00\x00\x00\x00\xff\xff"] + [b"\x02" + stream_no.to_bytes(4, "big") + i.to_bytes(2, "big")
                                               for i in range(len(bodies))]
    rows += [b"\x01" + offset.to_bytes(4, "big") + b"\x00\x00" for offset in (at, xref_at)]
    table = zlib.compress(b"".join(rows))
    out += (b"%d 0 obj\n<< /Type /XRef /Size %d /W [1 4 2] /Root 1 0 R /Filter /FlateDecode /Length %d >>\n"
            % (stream_no + 1, stream_no + 2, len(table)))
    out += b"stream\n" + table + b"\nendstream\nendobj\nstartxref\n%d\n%%%%EOF\n" % xref_at
    return bytes(out)


def document(pdf_bytes: bytes | None = None, /, **source) -> dict:
    src = source or {"type": "base64", "media_type": "application/pdf", "data": b64(pdf_bytes)}
    return {"type": "document", "source": src}


def image(data: bytes, media_type: str = "image/png") -> dict:
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": b64(data)}}


def request(*blocks: dict, text: str = "t" * 35, max_tokens: int = 16) -> dict:
    return {"max_tokens": max_tokens, "system": "s" * 35,
            "messages": [{"role": "user", "content": [*blocks, {"type": "text", "text": text}]}]}


def picture(fmt: str, size: tuple[int, int], **options) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 30, 90)).save(out, fmt, **options)
    return out.getvalue()


# PDFs --------------------------------------------------------------------------------------


def test_a_pdf_costs_its_pages_counted_in_its_bytes():
    many = request(document(pdf(150)))
    assert estimate(many) == Estimate(20 + 150 * TOKENS_PER_PDF_PAGE, 150)
    assert estimate_input_tokens(many) == 450_020
    assert too_big(HAIKU, many).startswith("150 PDF pages > the 100 a model with its context takes")
    assert too_big(SONNET, many) is None
    few = request(document(pdf(3)))
    assert estimate(few) == Estimate(20 + 3 * TOKENS_PER_PDF_PAGE, 3)
    assert too_big(HAIKU, few) is None
    assert too_big(HAIKU, request(document(pdf(66)))) is None  # 198,020 tokens
    assert too_big(HAIKU, request(document(pdf(67)))) == (
        "about 201,020 input tokens (estimated) do not fit its 200,000-token context")


def test_page_objects_are_counted_however_they_are_spelled_and_the_tree_is_not_a_page():
    for spelling in (b"/Type /Page", b"/Type/Page", b"/Type\n/Page", b"/Type  /Page", b"/Type\r\n/Page"):
        assert pdf_pages(b64(pdf(7, spelling))) == 7, spelling
    assert pdf_pages(b64(pdf(7, b"/Type /Pages"))) == 7  # no page objects: the tree's /Count
    assert pdf_pages(b64(pdf(0, count=False))) is None


def test_pages_inside_compressed_object_streams_are_counted():
    data = pdf_with_object_stream(120)
    assert b"/Type/Page" not in data and b"/Type /Page" not in data
    assert pdf_pages(b64(data)) == 120
    assert too_big(HAIKU, request(document(data))).startswith("120 PDF pages")


def test_the_api_page_limit_holds_whatever_the_tokens():
    pages_101 = request(document(pdf(101)))
    assert too_big((500_000, 64_000), pages_101).startswith("101 PDF pages > the 100")
    assert too_big((1_000_000, 64_000), pages_101) is None
    assert too_big((1_000_000, 64_000), request(document(pdf(60)), document(pdf(60)))) is None


def test_a_document_of_unknown_size_is_unsure_and_kept_off_a_small_context():
    for doc in (document(type="url", url="https://example.com/report.pdf"),
                document(type="file", file_id="file_011CNha8iCJcU1wXNR6q4V8w"),
                document(b"%PDF-1.7 nothing that says how many pages"),
                {"type": "document", "source": {"type": "base64", "data": "not base64 at all: ±"}}):
        est = estimate(request(doc))
        assert est == Estimate(20 + UNSURE_PAGES * TOKENS_PER_PDF_PAGE, UNSURE_PAGES, 1), doc
        why = too_big(HAIKU, request(doc))
        assert why == ("about 300,020 input tokens (estimated; 1 document(s) of unknown size counted "
                       "as 100 pages each) do not fit its 200,000-token context")
        assert too_big(SONNET, request(doc)) is None


def test_text_documents_count_by_length_and_content_documents_by_their_blocks():
    text = document(type="text", media_type="text/plain", data="x" * 7000)
    assert estimate(request(text)) == Estimate(20 + 2000)
    titled = {**text, "title": "t" * 35, "context": "c" * 35}
    assert estimate(request(titled)) == Estimate(20 + 2000 + 20)
    content = document(type="content", content=[
        {"type": "text", "text": "y" * 3500},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}])
    assert estimate(request(content)) == Estimate(20 + 1000 + IMAGE_TOKENS_MAX)
    assert estimate(request(document(type="content", content="z" * 350))) == Estimate(20 + 100)
    novel = document(type="text", media_type="text/plain", data="w" * 1_000_000)
    assert "about 285,735 input tokens" in too_big(HAIKU, request(novel))


def test_attachments_inside_tool_results_are_counted():
    result = {"type": "tool_result", "tool_use_id": "toolu_1",
              "content": [{"type": "text", "text": "r" * 35}, document(pdf(2))]}
    assert estimate(request(result)) == Estimate(20 + 10 + 2 * TOKENS_PER_PDF_PAGE, 2)


def test_too_big_uses_the_estimate_it_is_given():
    big = request(document(pdf(150)))
    assert too_big(HAIKU, big, estimate(big)) == too_big(HAIKU, big)
    assert too_big(HAIKU, big, Estimate(10)) is None  # nothing decoded again
    assert too_big(HAIKU, {**big, "max_tokens": 64_001}, Estimate(10)).startswith("max_tokens")


# Images ------------------------------------------------------------------------------------


def png_header(width: int, height: int) -> bytes:
    ihdr = b"IHDR" + width.to_bytes(4, "big") + height.to_bytes(4, "big") + b"\x08\x02\x00\x00\x00"
    return b"\x89PNG\r\n\x1a\n" + (13).to_bytes(4, "big") + ihdr + zlib.crc32(ihdr).to_bytes(4, "big")


def test_dimensions_are_read_from_tiny_headers_of_each_format():
    gif = b"GIF89a" + (640).to_bytes(2, "little") + (480).to_bytes(2, "little") + b"\xf7\x00\x00" + bytes(21)
    jpeg = (b"\xff\xd8" + b"\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
            + b"\xff\xff"  # a fill byte
            + b"\xff\xc2\x00\x11\x08" + (480).to_bytes(2, "big") + (640).to_bytes(2, "big") + bytes(12))
    vp8 = (b"RIFF\x00\x00\x00\x00WEBPVP8 \x00\x00\x00\x00\x10\x02\x00\x9d\x01\x2a"
           + (640).to_bytes(2, "little") + (480).to_bytes(2, "little"))
    vp8l = (b"RIFF\x00\x00\x00\x00WEBPVP8L\x00\x00\x00\x00\x2f"
            + (639 | 479 << 14).to_bytes(4, "little") + bytes(5))
    vp8x = (b"RIFF\x00\x00\x00\x00WEBPVP8X\x0a\x00\x00\x00\x10\x00\x00\x00"
            + (639).to_bytes(3, "little") + (479).to_bytes(3, "little"))
    for data in (png_header(640, 480), gif, jpeg, vp8, vp8l, vp8x):
        assert image_size(_b64_reader(b64(data))) == (640, 480), data[:16]
        assert image_tokens({"type": "base64", "data": b64(data)}) == 410  # ⌈640 × 480 / 750⌉
    assert image_size(_b64_reader(b64(b"BM not a format the API takes" + bytes(30)))) is None


@pytest.mark.parametrize("fmt, options", [
    ("PNG", {}), ("GIF", {}), ("WEBP", {"lossless": True}), ("WEBP", {"quality": 80}),
    ("WEBP", {"exif": b"Exif\x00\x00" + bytes(64)}), ("JPEG", {"progressive": True}),
    # EXIF and a 200 KB ICC profile (several segments) before the frame header: walked, not decoded
    ("JPEG", {"exif": b"Exif\x00\x00" + bytes(60_000), "icc_profile": b"\x01" * 200_000}),
])
def test_dimensions_of_real_images_of_each_format(fmt, options):
    data = picture(fmt, (1000, 500), **options)
    assert image_size(_b64_reader(b64(data))) == (1000, 500)
    assert estimate(request(image(data))) == Estimate(20 + 667)  # ⌈1000 × 500 / 750⌉


def test_an_image_costs_its_pixels_as_the_api_resizes_it():
    assert estimate(request(image(picture("PNG", (200, 200))))) == Estimate(20 + 54)
    wide = {"type": "base64", "data": b64(png_header(3000, 400))}
    assert image_tokens(wide) == 438  # resized to 1568 × 209: ⌈1568 × 209.07 / 750⌉
    for width, height in ((1568, 1568), (3000, 2000), (7999, 7999), (100_000, 100_000)):
        assert image_tokens({"type": "base64", "data": b64(png_header(width, height))}) == IMAGE_TOKENS_MAX
    for source in ({"type": "url", "url": "https://example.com/a.jpg"}, {"type": "file", "file_id": "f"},
                   {"type": "base64", "data": "!!!!"}, {"type": "base64", "data": b64(b"\x89PNG")},
                   {"type": "base64", "data": b64(png_header(0, 10))}, None):
        assert image_tokens(source) == IMAGE_TOKENS_MAX, source


def test_a_20_mb_image_costs_one_resized_image_and_many_images_count_each():
    huge = png_header(6000, 4000) + os.urandom(20 * 1024 * 1024)
    est = estimate(request(image(huge)))
    assert est == Estimate(20 + IMAGE_TOKENS_MAX)  # big in bytes, one image once resized
    assert too_big(HAIKU, request(image(huge))) is None
    photo = image(picture("JPEG", (1000, 1000)))  # ⌈1000 × 1000 / 750⌉ = 1,334 each
    assert too_big((10_000, 64), request(*[photo] * 7)) is None
    assert too_big((10_000, 64), request(*[photo] * 8)) == (
        "about 10,692 input tokens (estimated) do not fit its 10,000-token context")
