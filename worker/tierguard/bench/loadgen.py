"""A small HTTP/1.1 load generator for the benchmarks: keep-alive connections, one request in flight each.

It sends prebuilt request bytes over asyncio streams and reads just enough of each
response (the head and ``content-length`` bytes, or chunks to the last) to time it,
so a Python process can drive a few thousand requests a second. Runs in a process
of its own (:func:`run_in_process`), so its CPU is not the server's.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import time
from typing import Any


def request_bytes(host: str, port: int, path: str, body: dict[str, Any], headers: dict[str, str]) -> bytes:
    payload = json.dumps(body).encode()
    head = [f"POST {path} HTTP/1.1", f"host: {host}:{port}", "content-type: application/json",
            f"content-length: {len(payload)}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + payload


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, None]:
    """Read one whole response; its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    lower = head.lower()
    if b"transfer-encoding: chunked" in lower:
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    else:
        i = lower.index(b"content-length:") + 15
        await reader.readexactly(int(lower[i:lower.index(b"\r\n", i)]))
    return status, None


async def _closed_loop(host: str, port: int, payload: bytes, connections: int,
                       seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, port)
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            writer.write(payload)
            try:
                status, _ = await _read_response(reader)
            except (asyncio.IncompleteReadError, ConnectionError):  # the server closed it: an error
                errors += 1
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
                continue
            latencies.append(time.perf_counter() - t0)
            errors += status != 200
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    n = len(latencies)
    return {"connections": connections, "requests": n, "errors": errors, "rps": round(n / elapsed, 1),
            "p50_ms": round(latencies[n // 2] * 1000, 3) if n else None,
            "p99_ms": round(latencies[min(n - 1, int(n * 0.99))] * 1000, 3) if n else None}


def closed_loop(host: str, port: int, payload: bytes, connections: int, seconds: float) -> dict[str, Any]:
    return asyncio.run(_closed_loop(host, port, payload, connections, seconds))


def run_in_process(host: str, port: int, payload: bytes, connections: int,
                   seconds: float) -> dict[str, Any]:
    """:func:`closed_loop` in a fresh process (spawned: nothing of this process's state)."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(closed_loop, (host, port, payload, connections, seconds))


class Connection:
    """One blocking keep-alive connection that times requests (total, and to the first SSE event)."""

    def __init__(self, host: str, port: int):
        import socket

        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def _until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            self.buf += chunk
        i = self.buf.index(marker) + len(marker)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def _exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def request(self, payload: bytes) -> tuple[int, float, float | None]:
        """(status, seconds to the whole response, seconds to the first ``event:`` or None)."""
        t0 = time.perf_counter()
        self.sock.sendall(payload)
        head = self._until(b"\r\n\r\n").lower()
        status = int(head.split(b" ", 2)[1])
        first = None
        if b"transfer-encoding: chunked" in head:
            while True:
                size = int(self._until(b"\r\n").strip(), 16)
                data = self._exactly(size + 2)
                if first is None and b"event:" in data:
                    first = time.perf_counter() - t0
                if size == 0:
                    break
        else:
            i = head.index(b"content-length:") + 15
            self._exactly(int(head[i:head.index(b"\r\n", i)]))
        return status, time.perf_counter() - t0, first

    def close(self) -> None:
        self.sock.close()
