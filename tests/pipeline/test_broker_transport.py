"""The worker's broker transport: one command client per channel, kombu's semantics kept (real Redis)."""

from __future__ import annotations

import time

import pytest
import redis
from kombu import Connection

from tierguard.config import Settings
from tierguard.pipeline import broker_transport
from tierguard.pipeline.broker_transport import TRANSPORT, transport_for
from tierguard.pipeline.tasks import worker_app

OPTIONS = {"visibility_timeout": 1, "unacked_restore_interval": 1, "unacked_restore_throttle": 1}


@pytest.mark.parametrize(("url", "chosen"), [
    ("redis://127.0.0.1:6379/0", TRANSPORT),
    ("redis://:pw@cache/2", TRANSPORT),
    ("rediss://cache:6380/0?ssl_cert_reqs=required&ssl_ca_certs=/ca.pem", TRANSPORT),
    ("rediss://cache:6380/0", None),  # kombu's own TLS default for a bare rediss:// stays kombu's
    ("sentinel://s1:26379;sentinel://s2:26379", None),
    ("redis://a:6379/0;redis://b:6379/0", None),
    ("memory://", None),
    ("localhost", None),
])
def test_the_transport_is_chosen_for_plain_redis_urls_only(url, chosen):
    assert transport_for(url) == chosen


def test_the_worker_app_uses_it_and_celery_sees_a_redis_broker(redis_url, sqlite_url):
    app = worker_app(Settings(redis_url=redis_url, database_url=sqlite_url))
    assert app.conf.broker_transport == TRANSPORT
    with app.connection_for_read() as conn:
        assert conn.transport.driver_type == "redis"
        assert isinstance(conn.default_channel, broker_transport.Channel)
    plain = worker_app(Settings(redis_url="rediss://cache:6380/0", database_url=sqlite_url))
    assert plain.conf.broker_transport is None


def _queue(conn: Connection, name: str):
    return conn.SimpleQueue(name)


def test_one_command_client_per_pool_and_acks_still_clear_the_unacked_index(redis_url):
    r = redis.Redis.from_url(redis_url)
    with Connection(redis_url, transport=TRANSPORT, transport_options=OPTIONS) as conn:
        channel = conn.default_channel
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second
        assert channel.client is not first  # the BRPOP client is kombu's own
        queue = _queue(conn, "tq")
        queue.put({"n": 1})
        message = queue.get(timeout=5)
        assert r.hlen("unacked") == 1 and r.zcard("unacked_index") == 1
        message.ack()
        assert r.hlen("unacked") == 0 and r.zcard("unacked_index") == 0
        old = channel.pool
        channel._disconnect_pools()  # what a fork or a reconnect does
        with channel.conn_or_acquire() as renewed:
            assert renewed is not first and renewed.connection_pool is channel.pool is not old
        queue.close()


def test_an_unacked_message_comes_back_after_the_visibility_timeout(redis_url):
    r = redis.Redis.from_url(redis_url)
    with Connection(redis_url, transport=TRANSPORT, transport_options=OPTIONS) as dead:
        queue = _queue(dead, "tq2")
        queue.put({"n": 2})
        assert queue.get(timeout=5).payload == {"n": 2}
        dead.default_channel.qos._delivered.clear()  # as if killed: nothing restored on close
    assert r.hlen("unacked") == 1
    time.sleep(1.2)
    with Connection(redis_url, transport=TRANSPORT, transport_options=OPTIONS) as alive:
        alive.default_channel.qos.restore_visible(num=10, interval=1)
        queue = _queue(alive, "tq2")
        again = queue.get(timeout=5)
        assert again.payload == {"n": 2}
        again.ack()
        queue.close()
    assert r.hlen("unacked") == 0 and r.llen("tq2") == 0
