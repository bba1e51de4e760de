"""Both upstream clients (``lean`` and ``httpx2``) against a hostile upstream: informational heads
before the answer, bytes after it, chunked trailers, a body cut short, and request targets that
must reach the upstream as the caller sent them. Each answer must stay its own caller's, and every
place in the lean pool must come back."""

import asyncio
import socket
import threading

import httpx2
import pytest

from tests.app.gatewayparts import POLICY, SCENARIO
from tierguard.app.relay import request_target
from tierguard.app.upstream import Upstream

CLIENTS = ("lean", "httpx2")


def answer(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n\r\n%s%s" % (
        len(body), body, extra)


class Hostile:
    """An HTTP/1.1 server on its own thread whose answer depends on the path asked for; every answer
    names the request it answers (its ``x-id`` header), ``/echo`` sends back the request's head."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.connections = 0
        started = threading.Event()
        threading.Thread(target=self._run, args=(started,), daemon=True).start()
        started.wait(10)
        self.url = f"http://127.0.0.1:{self.port}"

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        started.set()
        self.loop.run_forever()

    def stop(self) -> None:
        async def closed() -> None:
            self.server.close()
            for task in asyncio.all_tasks() - {asyncio.current_task()}:
                task.cancel()

        asyncio.run_coroutine_threadsafe(closed(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                fields = dict(line.lower().split(b": ", 1) for line in lines[1:] if b": " in line)
                await reader.readexactly(int(fields.get(b"content-length", b"0")))
                if not await self._answer(lines[0].split(b" ")[1], head, fields, writer):
                    return
        except (asyncio.IncompleteReadError, asyncio.CancelledError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _answer(self, path: bytes, head: bytes, fields: dict, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False to close the connection after it."""
        mine = fields.get(b"x-id", b"-")
        if fields.get(b"expect") == b"100-continue" or path == b"/continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.01)  # the final head in a later read
        if path.startswith(b"/echo"):
            writer.write(answer(head))
        elif path == b"/hints":  # the informational head and the answer in one read
            writer.write(b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n" + answer(mine))
        elif path == b"/extra":  # a second, unasked-for answer right behind this one
            writer.write(answer(mine, extra=answer(b"STALE")))
        elif path == b"/garbage":
            writer.write(answer(mine, extra=b"garbage"))
        elif path == b"/trailers":
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-trailer\r\n\r\n"
                         b"%x\r\n%s\r\n0\r\nx-trailer: sneaked-in\r\n\r\n" % (len(mine), mine))
        elif path == b"/cut":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n" + mine)
            await writer.drain()
            return False
        else:
            writer.write(answer(mine))
        await writer.drain()
        return True


@pytest.fixture
def hostile():
    server = Hostile()
    yield server
    server.stop()


async def exchange(up: Upstream, path: str, mine: bytes) -> tuple[int, object, bytes]:
    """One request through ``up``: its status, headers and whole body."""
    response, shard = await up.send("POST", path, [(b"x-id", mine)], b"{}")
    try:
        return response.status_code, response.headers, b"".join([c async for c in response.aiter_raw()])
    finally:
        await response.aclose()
        up.done(shard)


def places_free(up: Upstream) -> bool:
    return up.lean is None or up.lean.slots is None or up.lean.slots.free == up.lean.max_connections


@pytest.mark.parametrize("client", CLIENTS)
def test_informational_heads_are_skipped_and_the_final_answer_is_the_callers(hostile, client):
    async def run() -> None:
        up = Upstream(hostile.url, 4, 5.0, client)
        for path in ("/continue", "/hints", "/continue", "/plain"):
            status, headers, body = await exchange(up, path, path.encode())
            assert (status, body) == (200, path.encode())
            assert headers.get("link") is None and headers.get("content-type") == "text/plain"
        assert places_free(up)
        await up.aclose()

    asyncio.run(run())
    assert hostile.connections == 1  # an informational head does not cost the connection


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("trailing", ["/extra", "/garbage"])
def test_bytes_after_an_answer_never_reach_this_caller_or_the_next(hostile, client, trailing):
    async def run() -> None:
        up = Upstream(hostile.url, 1, 5.0, client)  # one connection: the next request would reuse it
        for mine in (b"first", b"second", b"third"):
            status, _, body = await exchange(up, trailing, mine)
            assert (status, body) == (200, mine)
            status, _, body = await exchange(up, "/plain", mine + b"-plain")
            assert (status, body) == (200, mine + b"-plain")
        assert places_free(up)
        await up.aclose()

    asyncio.run(run())
    assert hostile.connections == 4  # each connection that carried trailing bytes was closed


@pytest.mark.parametrize("client", CLIENTS)
def test_chunked_trailers_are_not_added_to_the_answers_headers(hostile, client):
    async def run() -> None:
        up = Upstream(hostile.url, 2, 5.0, client)
        for mine in (b"one", b"two"):
            status, headers, body = await exchange(up, "/trailers", mine)
            assert (status, body) == (200, mine)
            assert headers.get("x-trailer") is None
            assert [k for k, _ in headers.raw if k.lower() == b"x-trailer"] == []
        assert places_free(up)
        await up.aclose()

    asyncio.run(run())
    assert hostile.connections == 1


@pytest.mark.parametrize("client", CLIENTS)
def test_a_body_cut_short_is_a_transport_error_and_frees_its_place(hostile, client):
    async def run() -> None:
        up = Upstream(hostile.url, 1, 5.0, client)
        for _ in range(3):
            with pytest.raises(httpx2.TransportError):
                await exchange(up, "/cut", b"short")
            assert places_free(up)
        assert (await exchange(up, "/plain", b"after"))[::2] == (200, b"after")
        await up.aclose()

    asyncio.run(run())


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("target", ["/v1/\u20ac", "/v1/a\r\nx-injected: 1", "/v1/a b", "/v1/\x00",
                                    "/v1/\xe9"])
def test_a_target_that_cannot_go_in_a_request_line_is_refused_and_holds_no_place(hostile, client, target):
    async def run() -> None:
        up = Upstream(hostile.url, 2, 5.0, client)
        for _ in range(3):  # more than the pool has places
            with pytest.raises(ValueError, match="request target"):
                await up.send("GET", target, [], b"")
        assert places_free(up)
        assert (await exchange(up, "/plain", b"fine"))[::2] == (200, b"fine")
        await up.aclose()

    asyncio.run(run())
    assert hostile.connections == 1


def scope(path: str, raw: bytes | None, query: bytes = b"") -> dict:
    return {"path": path, "raw_path": raw, "query_string": query}


def test_the_target_is_the_path_as_the_caller_sent_it():
    assert request_target(scope("/v1/a\r\nb", b"/v1/a%0d%0Ab", b"x=%20")) == "/v1/a%0d%0Ab?x=%20"
    assert request_target(scope("/v1/a b/\u20ac%", None)) == "/v1/a%20b/%E2%82%AC%25"  # no raw path
    assert request_target(scope("/c/sentiment/v1/x y", b"/c/sentiment/v1/x%20y")) == "/v1/x%20y"
    assert request_target(scope("/c/sentiment/v1/x", b"/c%2Fsentiment/v1/x")) == "/v1/x"
    with pytest.raises(ValueError, match="'/v1/a\\\\tb'"):
        request_target(scope("/v1/a\tb", b"/v1/a\tb"))


def raw_exchange(base: str, request: bytes) -> tuple[bytes, bytes]:
    """(the final answer's head, its body) for ``request`` sent on a socket of its own."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while True:
            if data.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"):  # the gateway's own, to the caller
                data = data[len(b"HTTP/1.1 100 Continue\r\n\r\n"):]
            head, _, body = data.partition(b"\r\n\r\n")
            length = [int(line[15:]) for line in head.lower().split(b"\r\n")
                      if line.startswith(b"content-length: ")]
            if length and len(body) >= length[0]:
                return head, body
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk


@pytest.mark.parametrize("client", CLIENTS)
def test_through_the_gateway_the_request_line_is_the_callers_and_expect_stays_here(
        stack, simulator, sqlite_url, hostile, client):
    sim = simulator(**SCENARIO)
    stack.configure(policy=POLICY, database_url=sqlite_url, base_url=sim.base_url)
    base = stack.start_gateway(TIERGUARD_UPSTREAM_URL=hostile.url, TIERGUARD_GATEWAY_CLIENT=client)
    for path, upstream in ((b"/echo%0d%0ax-injected:%201", b"/echo%0d%0ax-injected:%201"),
                           (b"/echo/a%20b?q=%0a", b"/echo/a%20b?q=%0a"),
                           (b"/c/sentiment/echo/%E2%82%AC", b"/echo/%E2%82%AC")):
        head, echoed = raw_exchange(base, b"POST %s HTTP/1.1\r\nhost: gw\r\ncontent-length: 2\r\n"
                                          b"expect: 100-continue\r\n\r\n{}" % path)
        assert head.startswith(b"HTTP/1.1 200 "), head
        assert echoed.startswith(b"POST %s HTTP/1.1\r\n" % upstream), echoed
        assert b"\r\nexpect:" not in echoed.lower() and b"x-injected" not in echoed.split(b"\r\n", 1)[1]
