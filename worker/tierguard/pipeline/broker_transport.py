"""The worker's Redis broker transport: kombu's, with nothing lost between Redis and a worker.

**Landing.** kombu pops a message with ``BRPOP`` and only then records it as unacknowledged
(``unacked``): a worker killed between the two (its reply still in the socket) loses the
message for good, and a busy worker with a backlog nearly always has one there. Consuming one
Redis list (the worker's one queue, ``priority_steps`` ``[0]``), this channel moves the message
with ``BLMOVE`` into a list of its own (``unacked_inflight:TOKEN:QUEUE``), and records it as
unacknowledged and takes it out of that list in one transaction. Each channel's list is indexed in
the ``unacked_inflight`` sorted set by a heartbeat (about every second); a list whose channel has
not beaten for the visibility timeout is pushed back onto its queue, marked redelivered, by the
next restore sweep of any worker. A channel whose reply was lost with its connection lands through
a new list from then on, leaving the old one to that sweep. A full Redis (``noeviction``)
refuses ``BLMOVE``, the heartbeat and the record, where kombu's ``BRPOP`` is not refused but its
record is (the message lost): the channel then takes nothing for a second at a time, and its worker
goes on. Consuming several lists, a channel falls back to kombu's ``BRPOP``.

**One command client per channel.** kombu's channel builds a new ``redis.Redis`` for every
``conn_or_acquire`` (each unacked-message append, each ack, each restore), about 100 µs of the
Celery main thread's CPU per message. A redis-py client over a connection pool is thread-safe,
so this channel keeps one for its pool and builds a new one only when the pool is replaced
(after a fork or a reconnect). The client kombu uses for blocking pops (``Channel.client``) and
the pub/sub client are kombu's own; so are the visibility timeout, the unacked restore and acks.
"""

from __future__ import annotations

import logging
import time
import uuid
from functools import partial
from queue import Empty
from typing import Any, NoReturn
from urllib.parse import parse_qs, urlsplit

from kombu.transport import redis, virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads
from redis.exceptions import OutOfMemoryError, RedisError

log = logging.getLogger(__name__)

TRANSPORT = "tierguard.pipeline.broker_transport:Transport"
SWEEP_LIMIT = 100  # stranded lists pushed back per sweep
REFUSED_S = 1.0  # after a full Redis refused a landing write: this long without one


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


def landing_name(index: str, token: str, source: str) -> str:
    """A channel's landing list for the Redis list ``source``: ``INDEX:TOKEN:SOURCE``."""
    return f"{index}:{token}:{source}"


def source_of(index: str, name: str) -> str:
    """The Redis list a landing list takes from (the token is 32 hex digits; any name may follow)."""
    return name[len(index) + 34:]


class QoS(redis.QoS):
    """kombu's ack emulation; a message moved into the channel's landing list is recorded as
    unacknowledged and taken out of that list at once."""

    def append(self, message: Any, delivery_tag: str) -> None:
        landing = self.channel._landing
        if landing is None:
            return super().append(message, delivery_tag)
        delivery = message.delivery_info  # (fields missing: raised while it is still landing)
        record = dumps([message._raw, delivery["exchange"], delivery["routing_key"]])
        self.channel._landing = None
        try:
            with self.pipe_or_acquire() as pipe:
                pipe.zadd(self.unacked_index_key, {delivery_tag: time.time()}) \
                    .hset(self.unacked_key, delivery_tag, record) \
                    .lrem(landing[0], 1, landing[1]).execute()
        except BaseException as err:  # not recorded (Redis full, read-only, gone): the sweep's
            self.channel._new_token()
            if isinstance(err, OutOfMemoryError):  # Redis full: the worker goes on
                self.channel._refuse(err)
                raise Empty() from None
            raise
        virtual.QoS.append(self, message, delivery_tag)

    def restore_visible(self, start: int = 0, num: int = 10, interval: int = 10) -> None:
        sweep = not self._vrestore_count % (interval or 1)  # kombu's throttle, counted below
        for channel in getattr(self.channel.connection, "channels", None) or [self.channel]:
            if isinstance(channel, Channel):  # (kombu sweeps through one channel: all beat here)
                channel._beat_or_refuse(force=True)
        super().restore_visible(start, num, interval)
        if sweep:
            restore_stranded(self.channel, time.time() - self.visibility_timeout)


class Channel(redis.Channel):
    """kombu's Redis channel: messages land through a list of its own; its command client (not
    the blocking one) is built once per pool."""

    QoS = QoS
    _command_client: Any = None
    _command_pool: Any = None
    _landing: tuple[str, bytes] | None = None  # (its list, the message) being delivered, until recorded
    _moving: tuple[str, str] | None = None  # (queue, its list) of the BLMOVE in flight
    _beaten_at = 0.0
    _refused_at = float("-inf")

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)
        pool = self.pool
        if self._command_pool is not pool:
            self._command_client = super()._create_client()
            self._command_pool = pool
        return self._command_client

    @property
    def _index(self) -> str:
        return f"{self.unacked_key}_inflight"

    def _landing_list(self, key: str) -> str:
        if "_token" not in self.__dict__:
            self.__dict__["_token"] = uuid.uuid4().hex
        return landing_name(self._index, self.__dict__["_token"], key)

    def _new_token(self) -> None:
        """Land through a new list from now on: the old one, if a message reached it unrecorded (a
        reply lost with its connection), stops beating and the sweep puts it back (nothing of it is
        ever deleted here, whatever a stale connection moves into it later)."""
        self.__dict__.pop("_token", None)
        self._beaten_at = 0.0

    def _single_list(self) -> tuple[str, str] | None:
        """(queue, its one Redis list) when this channel consumes exactly one list."""
        if self.global_keyprefix or len(self.active_queues) != 1:
            return None
        queue = next(iter(self.active_queues))
        keys = {self._q_for_pri(queue, pri) for pri in self.priority_steps}
        return (queue, keys.pop()) if len(keys) == 1 else None

    def _beat(self, force: bool = False) -> None:
        """This channel's landing list marked alive (at most about once a second)."""
        if self._moving is None and "_token" not in self.__dict__:
            return
        now = time.monotonic()
        if not force and now - self._beaten_at < min(1.0, self.visibility_timeout / 5):
            return
        single = self._single_list()
        if single is not None:
            with self.conn_or_acquire() as client:
                client.zadd(self._index, {self._landing_list(single[1]): time.time()})
            self._beaten_at = now

    def _beat_or_refuse(self, force: bool = False) -> bool:
        """:meth:`_beat`; ``False`` if Redis refused it (or any landing write within REFUSED_S)."""
        if time.monotonic() - self._refused_at < REFUSED_S:
            return False
        try:
            self._beat(force)
        except OutOfMemoryError as err:
            self._refuse(err)
            return False
        return True

    def _refuse(self, err: Exception) -> None:
        """Redis full (noeviction) refused a landing write: the channel waits REFUSED_S instead
        (kombu's BRPOP would take messages whose record Redis refuses, lost), its worker goes on."""
        now = time.monotonic()
        if now - self._refused_at > 60:
            log.warning("Redis refused a worker's write (%s): taking no message until it accepts "
                        "writes again", type(err).__name__)
        self._refused_at = now

    def _brpop_start(self, timeout: float | None = None) -> None:
        if self._moving is not None:  # the last BLMOVE's reply was never read (a lost connection)
            self._new_token()
            self._moving = None
        single = self._single_list()
        if single is None:
            return super()._brpop_start(timeout)
        queue, key = single
        self._queue_cycle.consume(1)
        self._moving = single
        if not self._beat_or_refuse():
            self._moving = None  # a wait on a list nothing fills, read as kombu's empty BRPOP
            command: tuple[Any, ...] = ("BRPOP", f"{self._index}:refused", REFUSED_S)
        else:
            wait = self.brpop_timeout if timeout is None else timeout
            command = ("BLMOVE", key, self._landing_list(key), "RIGHT", "LEFT", wait or 0)
        self._in_poll = self.client.connection
        self._brpop_sent_at = time.monotonic()
        self.client.connection.send_command(*command)

    def _brpop_read(self, **options: Any) -> bool:
        if self._moving is None:
            return super()._brpop_read(**options)
        (queue, key), self._moving = self._moving, None
        try:
            try:
                item = self.client.parse_response(self.client.connection, "BLMOVE", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                self._new_token()
                raise
            except OutOfMemoryError as err:  # refused: nothing moved
                self._refuse(err)
                raise Empty() from None
            if item is None:
                raise Empty()
            self._queue_cycle.rotate(queue)
            self._deliver_landed(queue, self._landing_list(key), item)
            return True
        finally:
            self._in_poll = None
            getattr(self, "_flush_brpop_reauth", lambda: None)()

    def _deliver_landed(self, queue: str, landing: str, item: bytes) -> None:
        """Hand a landed message to its consumer; recording it (kombu's ``qos.append``) takes it out
        of the landing list. One that kombu cannot read is dropped and logged, as kombu's pop
        drops it (once: never back onto the queue, where it would stop every worker in turn)."""
        try:
            payload = loads(bytes_to_str(item))
            props = payload.get("properties") if isinstance(payload, dict) else None
            if not isinstance(props, dict) or "delivery_tag" not in props:
                raise ValueError("no properties.delivery_tag")
        except (ValueError, TypeError) as err:
            self._drop(queue, landing, item, err)
        self._landing = (landing, item)
        try:
            self.connection._deliver(payload, queue)
        except BaseException as err:
            if self._landing is None:
                raise
            if isinstance(err, Exception) and not isinstance(err, (RedisError, OSError)):
                self._drop(queue, landing, item, err)  # kombu's reading of it failed, no Redis
            self._landing = None  # not recorded: the list is the sweep's
            self._new_token()
            raise
        if self._landing is not None:  # consumed without acks: nothing to record
            self._discard(landing, item)

    def _drop(self, queue: str, landing: str, item: bytes, err: BaseException) -> NoReturn:
        log.error("dropping a %d-byte message on %s that is not a kombu message (%s)",
                  len(item), queue, type(err).__name__)
        self._discard(landing, item)
        raise Empty() from None

    def _discard(self, landing: str, item: bytes) -> None:
        self._landing = None
        try:
            with self.conn_or_acquire() as client:
                client.lrem(landing, 1, item)
        except self.connection_errors:
            self._new_token()
            raise


def restore_stranded(channel: Channel, ceil: float) -> int:
    """Push back onto their queues the messages of landing lists whose channel has not beaten since
    ``ceil`` (a worker killed as a message landed); returns how many."""
    index = channel._index
    with channel.conn_or_acquire() as client:
        names = [bytes_to_str(n) for n in client.zrange(index, "-inf", ceil, byscore=True,
                                                        offset=0, num=SWEEP_LIMIT)]
        restored = sum(client.transaction(partial(_push_back, index, name, ceil), index, name,
                                          value_from_callable=True) for name in names)
    if restored:
        log.warning("%d message(s) a stopped worker had taken from the queue before recording them "
                    "were put back", restored)
    return restored


def _push_back(index: str, name: str, ceil: float, pipe: Any) -> int:
    """One landing list's messages back onto their queue, if its channel has not beaten since
    ``ceil``."""
    score = pipe.zscore(index, name)
    raws = pipe.lrange(name, 0, -1) if score is not None and score <= ceil else None
    pipe.multi()
    if raws is None:
        return 0
    source = source_of(index, name)
    for raw in raws:  # the newest first: the oldest ends rightmost, to be popped first
        pipe.rpush(source, _redelivered(raw))
    pipe.delete(name).zrem(index, name)
    return len(raws)


def _redelivered(raw: bytes) -> str | bytes:
    """A message marked redelivered, as kombu marks the unacked ones it restores (one that is not
    kombu's JSON goes back as it came)."""
    try:
        payload = loads(bytes_to_str(raw))
    except ValueError:
        return raw
    if not isinstance(payload, dict):
        return raw
    props = payload.get("properties")
    for part in (payload.get("headers"), props.get("delivery_info") if isinstance(props, dict) else None):
        if isinstance(part, dict):
            part["redelivered"] = True
    return dumps(payload)


class Transport(redis.Transport):
    """kombu's Redis transport with :class:`Channel`."""

    Channel = Channel
