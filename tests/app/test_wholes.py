"""A whole express request read without uvicorn's parser (app/wholes.py): what it reads is what
``httptools`` (uvicorn's parser) reads; anything else is left to the parser."""

import httptools
import pytest

from tierguard.app.wholes import whole

HEADER = b"x-tierguard-category"
BODY = b'{"model":"claude-opus-4-7","max_tokens":8,"messages":[]}'


def request(*lines: bytes, body: bytes = BODY, length: int | None = None) -> bytes:
    head = [b"POST /v1/messages HTTP/1.1", b"Host: gw", b"Content-Length: %d" % (
        len(body) if length is None else length), *lines]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


class _Parsed:
    def __init__(self, data: bytes):
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.complete = 0
        self.parser = httptools.HttpRequestParser(self)
        self.parser.feed_data(data)

    def on_header(self, name: bytes, value: bytes) -> None:  # as uvicorn lists them
        self.headers.append((name.lower(), value.rstrip(b" \t")))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete += 1


@pytest.mark.parametrize("lines", [
    (b"X-Tierguard-Category:  sentiment \t", b"x-api-key: sk-ant\t ", b"anthropic-beta: a, b",
     b"Connection: keep-alive"),
    (b"x-tierguard-category:routing", b"x-empty:", b"X-UPPER: Value With  Inner  Blanks"),
    (b"x-tierguard-category: caf\xe9", b"x-obs-text: \x80\xff", b"x-tab: a\tb"),
])
def test_a_whole_request_is_read_as_uvicorns_parser_reads_it(lines):
    data = request(*lines)
    got = whole(data, HEADER, 1024)
    parsed = _Parsed(data)
    assert got is not None and parsed.complete == 1 and parsed.parser.should_keep_alive()
    assert got.body == parsed.body == BODY and got.headers == parsed.headers
    category = dict(parsed.headers)[HEADER].decode("latin-1").strip()
    assert got.name == category


@pytest.mark.parametrize("data, why", [
    (request(b"x-tierguard-category: a").replace(b"POST", b"PUT"), "another method"),
    (request(b"x-tierguard-category: a").replace(b"/v1/messages", b"/v1/messages?beta=true"), "a query"),
    (request(b"x-tierguard-category: a").replace(b"HTTP/1.1", b"HTTP/1.0"), "HTTP/1.0"),
    (request(), "no category header"),
    (request(b"x-tierguard-category:  "), "an empty category"),
    (request(b"x-tierguard-category: a", b"x-tierguard-category: b"), "the category twice"),
    (request(b"x-tierguard-category: a", b"content-length: 3"), "content-length twice"),
    (request(b"x-tierguard-category: a", length=len(BODY) + 1), "the body not all in"),
    (request(b"x-tierguard-category: a") + b"POST", "bytes pipelined behind it"),
    (request(b"x-tierguard-category: a", length=2000), "past the size"),
    (request(b"x-tierguard-category: a").replace(b"Content-Length: ", b"Content-Length: +"), "a sign"),
    (request(b"x-tierguard-category: a", b"transfer-encoding: chunked"), "a transfer coding"),
    (request(b"x-tierguard-category: a", b"content-encoding: gzip"), "a content coding"),
    (request(b"x-tierguard-category: a", b"expect: 100-continue"), "expect"),
    (request(b"x-tierguard-category: a", b"upgrade: websocket"), "upgrade"),
    (request(b"x-tierguard-category: a", b"connection: close"), "connection: close"),
    (request(b"x-tierguard-category : a"), "a blank before the colon"),
    (request(b"x-tierguard-category: a", b"x-a: b", b" folded: c"), "an obsolete line folding"),
    (request(b"x-tierguard-category: a", b"proxy-connection: close"), "proxy-connection"),
    (request(b"x-tierguard-category: a").replace(b"Content-Length: ", b"Content-Length: " + b"0" * 5000),
     "a content-length past int()'s digits"),
    (request(b"x-tierguard-category: a", b"x-odd: a\nb"), "a bare line feed"),
    (request(b"x-tierguard-category: a", b"x-odd: a\rb"), "a bare carriage return"),
    (request(b"x-tierguard-category: a", b"x-odd: a\x00b"), "a NUL byte"),
    (request(b"x-tierguard-category: a", b"x-odd: a\x7fb"), "a DEL byte"),
    (request(b"x-tierguard-category: a", b"x-o\tdd: a"), "a tab in a name"),
    (request(b"x-tierguard-category: a", b"x-odd: a\x01b"), "a control byte in a value"),
    (request(b"x-tierguard-category: a", b"no-colon"), "a line without a colon"),
    (request(b"x-tierguard-category: a")[:60], "no end of head"),
])
def test_anything_else_is_left_to_the_parser(data, why):
    assert whole(data, HEADER, 1024) is None, why
