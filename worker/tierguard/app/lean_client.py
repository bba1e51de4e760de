"""The gateway's lean upstream client: HTTP/1.1 over asyncio protocols, parsed by ``httptools``.

One request is one ``write`` (head and body together; bodies up to ``MAX_BODY``), its response
parsed in C as it arrives: no per-request task, cancel scope or header normalisation.
Connections are kept alive in a LIFO pool (at most ``max_connections``, idle ones dropped
after ``KEEPALIVE_S``); a connection whose request was cancelled or whose answer was not read to
its end is closed, never reused, and so is one that receives bytes after an answer's end (a
second answer, garbage: nothing of it reaches this caller or the next). Informational (``1xx``)
heads are skipped, chunked trailers ignored. Bodies come as the upstream sent them (chunked transfer
decoded, content codings untouched); reading pauses while ``HIGH_WATER`` bytes wait for a
caller that reads slowly.

Failures are ``httpx2``'s exceptions (``ConnectError``, ``ConnectTimeout``, ``ReadTimeout``,
``RemoteProtocolError``, ``ReadError``), so the gateway handles both clients alike; the pool
only reaches an upstream directly (``http``/``https``): through a proxy, and for larger bodies,
the gateway uses ``httpx2`` (:class:`~tierguard.app.upstream.Upstream`).
"""

from __future__ import annotations

import asyncio
import collections
import re
import ssl
from typing import Any
from urllib.parse import urlsplit

import httptools
import httpx2

from tierguard.app.slots import Slots

KEEPALIVE_S = 30.0
HIGH_WATER = 256 * 1024  # bytes of body waiting for the caller before the socket is read no further
MAX_BODY = 64 * 1024  # larger request bodies go through httpx2 (Upstream.send): see the README
_UNSAFE = re.compile(r"[^\x21-\x7e]")  # what a request target's bytes may not be


def checked_target(target: str) -> bytes:
    """A request target's bytes for the request line; ValueError naming it if it has a byte that is
    not printable ASCII (CR and LF would start header lines upstream, a space would end the target)."""
    if _UNSAFE.search(target):
        raise ValueError(f"the request target {target!r} has a control, space or non-ASCII character: "
                         "it cannot go upstream")
    return target.encode("ascii")


class Head:
    """A response's headers: ``raw`` as received (names lower-cased), ``get`` case-insensitive."""

    __slots__ = ("raw", "_map")

    def __init__(self, raw: list[tuple[bytes, bytes]]):
        self.raw = raw
        self._map: dict[str, str] | None = None

    def get(self, name: str, default: Any = None) -> Any:
        if self._map is None:
            self._map = {}
            for k, v in self.raw:  # repeated names joined, as httpx2 does
                key, value = k.decode("latin-1"), v.decode("latin-1")
                self._map[key] = f"{self._map[key]}, {value}" if key in self._map else value
        return self._map.get(name.lower(), default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def items(self) -> list[tuple[str, str]]:
        self.get("")
        return list(self._map.items())  # type: ignore[union-attr]


class Connection(asyncio.Protocol):
    """One upstream connection; at most one request in flight."""

    def __init__(self, pool: Pool):
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: Response | None = None
        self.idle_since = 0.0
        self.closed = False
        self.busy = False  # holds one of the pool's places (a request in flight or being read)
        self.informational = False  # reading a 1xx head, skipped

    # asyncio.Protocol
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None:  # bytes nobody asked for: the connection cannot be trusted again
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            response.fail(httpx2.RemoteProtocolError("the upstream switched protocols"))
            self.close()
        except httptools.HttpParserError as err:
            response.fail(httpx2.RemoteProtocolError(f"malformed response from the upstream: {err}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        response = self.response
        if response is not None and not response.complete:
            if response.head is not None and response.until_close:  # a body that ends with the connection
                response.on_message_complete()
            else:
                response.fail(httpx2.ReadError("the upstream closed the connection") if response.head
                              is not None else httpx2.RemoteProtocolError(
                                  "the upstream closed the connection without sending a response"))

    # httptools callbacks (the response being read). Informational (1xx) heads are skipped: the final
    # head follows. Once the answer is complete, whatever comes next (a second answer, garbage) closes
    # the connection: nothing of it reaches this caller or the next.
    def on_message_begin(self) -> None:
        if self.response.complete:  # type: ignore[union-attr]
            self.close()

    def on_header(self, name: bytes, value: bytes) -> None:
        response = self.response
        if response.head is None:  # type: ignore[union-attr]  # after it: chunked trailers, ignored
            response.raw.append((name.lower(), value))  # type: ignore[union-attr]

    def on_headers_complete(self) -> None:
        response = self.response
        if response.head is not None:  # type: ignore[union-attr]  # a message after the answer
            return
        status = self.parser.get_status_code()
        if status < 100:  # (three digits, 000–099: not a status; httpx2's parser refuses it too)
            raise ValueError(f"status {status:03d} is not an HTTP status")
        if status < 200 and status != 101:
            self.informational = True
            response.raw.clear()  # type: ignore[union-attr]
        else:
            response.on_headers_complete(status)  # type: ignore[union-attr]

    def on_body(self, body: bytes) -> None:
        response = self.response
        if not response.complete:  # type: ignore[union-attr]
            response.on_body(body)  # type: ignore[union-attr]

    def on_message_complete(self) -> None:
        if self.informational:
            self.informational = False
        elif not self.response.complete:  # type: ignore[union-attr]
            self.response.on_message_complete()  # type: ignore[union-attr]

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()
        self.pool.forget(self)


class Response:
    """An upstream response: ``status_code``, ``headers`` (:class:`Head`), its body by
    ``aiter_raw``; ``aclose`` gives the connection back (kept alive only if read to its end)."""

    def __init__(self, conn: Connection, timeout: float):
        self.conn = conn
        self.timeout = timeout
        self.raw: list[tuple[bytes, bytes]] = []
        self.head: Head | None = None
        self.status_code = 0
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.complete = False
        self.error: Exception | None = None
        self.waiter: asyncio.Future | None = None
        self.paused = False
        self.until_close = False
        self.keep_alive = False  # read with the head: the parser forgets it once the message ends
        self.released = False

    @property
    def headers(self) -> Head:
        return self.head  # type: ignore[return-value]

    def on_headers_complete(self, status: int) -> None:
        self.status_code = status
        self.head = Head(self.raw)
        self.keep_alive = self.conn.parser.should_keep_alive()
        self.until_close = not self.keep_alive and not any(
            k in (b"content-length", b"transfer-encoding") for k, _ in self.raw)
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self.paused and self.conn.transport is not None:
            self.paused = True
            self.conn.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self._wake()

    def fail(self, error: Exception) -> None:
        if self.error is None and not self.complete:
            self.error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self, kind: type[Exception], what: str) -> None:
        """Wait for the parser's next step (TimeoutError mapped to ``kind`` after ``timeout``)."""
        loop = self.conn.loop
        self.waiter = waiter = loop.create_future()
        timer = loop.call_later(self.timeout, _expire, waiter)
        try:
            await waiter
        except TimeoutError:
            self.conn.close()
            raise kind(f"the upstream sent no {what} within {self.timeout:g} s") from None
        finally:
            timer.cancel()
            self.waiter = None

    async def head_arrived(self) -> None:
        while self.head is None:
            if self.error is not None:
                raise self.error
            await self._wait(httpx2.ReadTimeout, "response")

    async def aiter_raw(self) -> Any:
        while True:
            if self.chunks:
                chunk = self.chunks.popleft()
                self.buffered -= len(chunk)
                if self.paused and self.buffered <= HIGH_WATER // 2:
                    self.paused = False
                    if not self.conn.closed:
                        self.conn.transport.resume_reading()  # type: ignore[union-attr]
                yield chunk
            elif self.complete:
                return
            elif self.error is not None:
                raise self.error
            else:
                await self._wait(httpx2.ReadTimeout, "data")

    async def aclose(self) -> None:
        self.close()

    def close(self) -> None:
        """Give the connection back: kept alive only if the answer was read to its end."""
        if self.released:
            return
        self.released = True
        conn = self.conn
        conn.response = None
        if self.complete and self.error is None and self.keep_alive and not conn.closed:
            if self.paused:  # its end came while its reader lagged: the next answer must be read
                conn.transport.resume_reading()  # type: ignore[union-attr]
            conn.pool.release(conn)
        else:
            conn.close()


def _expire(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class Pool:
    """Kept-alive connections to one origin (``http://host:port`` or ``https://…``)."""

    def __init__(self, base_url: str, max_connections: int, timeout: float, tls: ssl.SSLContext | None,
                 connect_timeout: float = 10.0):
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"the upstream URL must be http(s)://host[:port]: {base_url!r}")
        self.https = url.scheme == "https"
        self.host = url.hostname
        self.port = url.port or (443 if self.https else 80)
        default = url.port is None or url.port == (443 if self.https else 80)
        name = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = (name if default else f"{name}:{self.port}").encode("idna")
        self.prefix = url.path.rstrip("/").encode()
        self.tls = tls if self.https else None
        self.max_connections = max_connections
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.idle: list[Connection] = []
        self.slots: Slots | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self.slots = Slots(self.max_connections)
        return self._loop

    def request_head(self, method: str, target: str, headers: list[tuple[bytes, bytes]],
                     size: int) -> bytearray:
        """A request's line and headers (``host`` and ``content-length`` the pool's), one buffer."""
        head = bytearray(b"%s %s%s HTTP/1.1\r\nhost: %s\r\n" % (
            method.encode(), self.prefix, checked_target(target), self.host_header))
        for name, value in headers:
            head += b"%s: %s\r\n" % (name, value)
        if size or method in ("POST", "PUT", "PATCH"):
            head += b"content-length: %d\r\n" % size
        head += b"\r\n"
        return head

    async def send(self, method: str, target: str, headers: list[tuple[bytes, bytes]],
                   body: bytes) -> Response:
        """Send one request; its response once the head is in (the body still to read). A target
        that cannot go in a request line is a ValueError before any place in the pool is taken."""
        head = self.request_head(method, target, headers, len(body))
        head += body
        loop = self.loop
        await self.slots.take()  # type: ignore[union-attr]
        try:
            conn = await self._connection(loop)
        except BaseException:
            self.slots.give()  # type: ignore[union-attr]
            raise
        # From here the place is the connection's: closing it gives the place back (Pool.forget).
        response = conn.response = Response(conn, self.timeout)
        try:
            conn.transport.write(head)  # type: ignore[union-attr]
            await response.head_arrived()
        except BaseException:  # cancelled, timed out or broken: this connection is not reused
            response.released = True
            conn.response = None
            conn.close()
            raise
        return response

    def _kept(self, now: float) -> Connection | None:
        """The most recently used kept-alive connection still good (marked busy), or None."""
        idle = self.idle
        if idle and now - idle[0].idle_since >= KEEPALIVE_S:  # the longest idle, at the bottom
            idle[0].close()
        while idle:
            conn = idle.pop()
            if not conn.closed and not conn.transport.is_closing() and now - conn.idle_since < KEEPALIVE_S:
                conn.busy = True
                return conn
            conn.close()
        return None

    def take_idle(self) -> Connection | None:
        """A kept-alive connection and its place, at once, or None (no place free, none kept):
        for a request sent without awaiting (:mod:`~tierguard.app.express`)."""
        if not self.idle or not self.slots.try_take():  # type: ignore[union-attr]
            return None
        conn = self._kept(self.loop.time())
        if conn is None:
            self.slots.give()  # type: ignore[union-attr]
        return conn

    async def _connection(self, loop: asyncio.AbstractEventLoop) -> Connection:
        conn = self._kept(loop.time())
        if conn is not None:
            return conn
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: Connection(self), self.host, self.port, ssl=self.tls,
                    server_hostname=self.host if self.tls else None)
        except TimeoutError:
            raise httpx2.ConnectTimeout(f"no connection to the upstream within {self.connect_timeout:g} s") \
                from None
        except (OSError, ssl.SSLError) as err:
            raise httpx2.ConnectError(f"{type(err).__name__}: {err}") from None
        conn.busy = True  # type: ignore[attr-defined]
        return conn  # type: ignore[return-value]

    def release(self, conn: Connection) -> None:
        conn.busy = False
        conn.idle_since = self.loop.time()
        conn.parser = httptools.HttpResponseParser(conn)
        self.idle.append(conn)
        self.slots.give()  # type: ignore[union-attr]

    def forget(self, conn: Connection) -> None:
        """A connection closed: out of the idle list, and its place free again if it held one."""
        if conn.busy:
            conn.busy = False
            self.slots.give()  # type: ignore[union-attr]
        elif conn in self.idle:
            self.idle.remove(conn)

    async def aclose(self) -> None:
        for conn in list(self.idle):
            conn.close()
