"""The worker's Redis broker transport: kombu's, keeping one command client per channel.

kombu's Redis channel builds a new ``redis.Redis`` for every ``conn_or_acquire`` (each
unacked-message append, each ack, each restore), about 100 µs of the Celery main thread's
CPU per message. A redis-py client over a connection pool is thread-safe, so this channel
keeps one for its pool and builds a new one only when the pool is replaced (after a fork or
a reconnect). The client kombu uses for BRPOP (``Channel.client``, whose connection it holds)
and the pub/sub client are kombu's own, unchanged; so are the visibility timeout, the unacked
restore and the acks.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

from kombu.transport import redis

TRANSPORT = "tierguard.pipeline.broker_transport:Transport"


def transport_for(url: str) -> str | None:
    """This transport for a single ``redis://`` URL, or a ``rediss://`` one whose TLS options are
    in its query (kombu reads them the same way); ``None`` (kombu's choice) for anything else: a
    bare ``rediss://`` keeps kombu's TLS default, which a named transport would skip."""
    if ";" in url or "://" not in url:
        return None
    parts = urlsplit(url)
    if parts.scheme == "redis":
        return TRANSPORT
    if parts.scheme == "rediss" and any(k.startswith("ssl_") for k in parse_qs(parts.query)):
        return TRANSPORT
    return None


class Channel(redis.Channel):
    """kombu's Redis channel with its command client (not the BRPOP one) built once per pool."""

    _command_client: Any = None
    _command_pool: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)
        pool = self.pool
        if self._command_pool is not pool:
            self._command_client = super()._create_client()
            self._command_pool = pool
        return self._command_client


class Transport(redis.Transport):
    """kombu's Redis transport with :class:`Channel`."""

    Channel = Channel
