"""The gateway's pooled HTTP client to the upstream Messages API.

Requests go straight to ``httpx2`` transports (no client-level cookie jar,
redirects or auth: a proxy must not carry one caller's state to the next).
Connections are spread over shards of ``SHARD`` each, because the pool scans
every connection it holds on each request.
"""

from __future__ import annotations

import httpx2

SHARD = 16


class Upstream:
    def __init__(self, base_url: str, max_connections: int = 1000, timeout: float = 600.0):
        self.base_url = base_url.rstrip("/")
        limits = httpx2.Limits(max_connections=SHARD, max_keepalive_connections=SHARD,
                               keepalive_expiry=30.0)
        self._shards = [httpx2.AsyncHTTPTransport(limits=limits, trust_env=False)
                        for _ in range(max(1, max_connections // SHARD))]
        self._busy = [0] * len(self._shards)
        self._next = 0
        self._timeout = {"connect": 10.0, "read": timeout, "write": timeout, "pool": timeout}

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
        shard = self._pick()
        request = httpx2.Request(method, self.base_url + target, headers=headers, content=body,
                                 extensions={"timeout": self._timeout})
        self._busy[shard] += 1
        try:
            return await self._shards[shard].handle_async_request(request), shard
        except BaseException:
            self._busy[shard] -= 1
            raise

    def done(self, shard: int) -> None:
        self._busy[shard] -= 1

    async def aclose(self) -> None:
        for transport in self._shards:
            await transport.aclose()
