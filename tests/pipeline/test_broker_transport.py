"""The worker's broker transport: one command client per channel, kombu's semantics kept (real Redis)."""

from __future__ import annotations

import os
import signal
import time
from contextlib import contextmanager
from queue import Empty

import anthropic
import pytest
import redis
from kombu import Connection

import tierguard
from tests.helpers import POLICY, SCENARIO, samples, wait_until, wrapped_call
from tierguard.config import Settings
from tierguard.pipeline import broker_transport
from tierguard.pipeline.broker_transport import TRANSPORT, transport_for
from tierguard.pipeline.tasks import worker_app

OPTIONS = {"visibility_timeout": 1, "unacked_restore_interval": 1, "unacked_restore_throttle": 1}
LANDING = {**OPTIONS, "priority_steps": [0]}  # one list per queue, as tierguard's apps use


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


def test_a_message_lands_through_the_channels_own_list_recorded_in_one_step(redis_url):
    r = redis.Redis.from_url(redis_url)
    with Connection(redis_url, transport=TRANSPORT, transport_options=LANDING) as conn:
        queue = _queue(conn, "tq3")
        queue.put({"n": 3})
        message = queue.get(timeout=5)
        (landing,) = r.zrange("unacked_inflight", 0, -1)  # its heartbeat
        assert landing.startswith(b"unacked_inflight:") and landing.endswith(b":tq3")
        assert r.llen(landing) == 0 and r.hlen("unacked") == 1  # moved out as it was recorded
        message.ack()
        assert r.hlen("unacked") == 0
        queue.close()
    with Connection(redis_url, transport=TRANSPORT, transport_options=OPTIONS) as conn:
        queue = _queue(conn, "tq3")  # several lists (kombu's priorities): kombu's own pop
        queue.put({"n": 4})
        assert queue.get(timeout=5).payload == {"n": 4}
        assert r.zcard("unacked_inflight") == 1
        queue.close()


def test_a_message_stranded_in_a_stopped_channels_list_goes_back_to_its_queue(redis_url):
    r = redis.Redis.from_url(redis_url)
    with Connection(redis_url, transport=TRANSPORT, transport_options=LANDING) as producer:
        queue = _queue(producer, "tq5")
        queue.put({"n": 5})
        queue.put({"n": 6})
        queue.close()
    stopped, alive = (f"unacked_inflight:{c * 32}:tq5" for c in "ab")
    r.lmove("tq5", stopped, "RIGHT", "LEFT")  # what a channel's BLMOVE did before it was killed
    r.lmove("tq5", alive, "RIGHT", "LEFT")  # a channel that beats: about to record its message
    odd = f"unacked_inflight:{'c' * 32}:tq6"
    r.lpush(odd, b"not kombu's JSON")
    r.zadd("unacked_inflight", {stopped: time.time() - 2, alive: time.time() + 60, odd: 0})
    with Connection(redis_url, transport=TRANSPORT, transport_options=LANDING) as conn:
        conn.default_channel.qos.restore_visible(num=10, interval=1)
        assert r.exists(stopped) == 0 and r.zscore("unacked_inflight", stopped) is None
        assert r.lrange("tq6", 0, -1) == [b"not kombu's JSON"]  # back as it came
        assert r.llen(alive) == 1  # left to its channel
        queue = _queue(conn, "tq5")
        again = queue.get(timeout=5)
        assert again.payload == {"n": 5} and again.headers["redelivered"] is True
        again.ack()
        queue.close()


def _blocked_pops(r: redis.Redis) -> int:
    db = r.connection_pool.connection_kwargs.get("db", 0)
    return sum(c["db"] == str(db) and "b" in c["flags"] and c["cmd"] in ("blmove", "brpop")
               for c in r.client_list())


def test_a_worker_killed_as_a_message_reaches_it_loses_nothing(stack, simulator, sqlite_url):
    """kombu's pop removes a message from Redis before the worker records it: a worker stopped in
    between (here: SIGSTOP while it waits on the queue, then SIGKILL) held it nowhere else."""
    sim = simulator(**SCENARIO)
    stack.configure(policy=POLICY, database_url=sqlite_url, base_url=sim.base_url,
                    visibility_timeout=5)
    r = redis.Redis.from_url(stack.env["TIERGUARD_REDIS_URL"])
    client = tierguard.ShadowedAnthropic(anthropic.Anthropic(max_retries=0))
    wrapped_call(client, "sentiment", 0)
    assert client.tierguard_flush(10)
    r.rename("tierguard", "held")  # the job, kept aside until the worker is stopped mid-wait
    victim = stack.start_worker(concurrency=4)
    for _ in range(100):
        os.killpg(victim.pid, signal.SIGSTOP)
        if _blocked_pops(r) == 1:
            r.lmove("held", "tierguard", "RIGHT", "LEFT")
            if r.llen("tierguard") == 0:  # taken by the stopped worker's pending pop
                break
            r.lmove("tierguard", "held", "RIGHT", "LEFT")
        os.killpg(victim.pid, signal.SIGCONT)
        time.sleep(0.05)
    else:
        raise AssertionError("never caught the worker waiting on the queue")
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    assert r.llen("tierguard") == 0 and r.hlen("unacked") == 0 and samples(sqlite_url) == 0
    stack.start_worker(concurrency=4)
    wait_until(lambda: samples(sqlite_url) == 1, 30, "the job the killed worker had taken")
    client.tierguard_close()


def _registered(channel) -> None:
    """A connection for the channel's blocking client, as kombu's poller gives it one."""
    if getattr(channel.client, "connection", None) is None:
        channel.client.connection = channel.client.connection_pool.get_connection()


@contextmanager
def _waiting(redis_url: str, name: str, *raws: bytes, payload: dict):
    """A consumer of queue ``name`` (``raws`` pushed first, then ``payload`` put) whose channel has
    sent its first blocking move: (queue, channel)."""
    with Connection(redis_url, transport=TRANSPORT, transport_options=LANDING) as conn:
        queue = _queue(conn, name)
        queue._consume()
        for raw in raws:
            redis.Redis.from_url(redis_url).lpush(name, raw)
        queue.put(payload)
        channel = conn.default_channel
        _registered(channel)
        channel._brpop_start(timeout=1)
        yield queue, channel
        queue.close()


@pytest.mark.parametrize("other_queue", [False, True])
def test_a_message_whose_reply_was_lost_is_left_to_the_sweep_not_to_its_live_channel(redis_url,
                                                                                     other_queue):
    """``other_queue``: the channel then consumes two queues (kombu's BRPOP) and one again; its old
    list must not beat again either (it would hold the message for as long as the channel lives)."""
    r = redis.Redis.from_url(redis_url)
    with _waiting(redis_url, "tq7", payload={"n": 7}) as (queue, channel):
        wait_until(lambda: r.llen("tq7") == 0, 5, "the message moved into the landing list")
        (lost,) = r.zrange("unacked_inflight", 0, -1)
        channel.client.connection.disconnect()  # the connection lost before the reply was read
        channel._in_poll = None
        _registered(channel)
        if other_queue:
            channel.basic_consume("tq13", False, lambda message: None, "another")
            channel._brpop_start(timeout=1)
            with pytest.raises(Empty):
                channel._brpop_read()
            channel.basic_cancel("another")
        channel._brpop_start(timeout=1)  # the channel lands through a new list from now on
        assert r.zcard("unacked_inflight") == 2 and r.llen(lost) == 1
        r.zadd("unacked_inflight", {lost: time.time() - 2})  # a visibility timeout later
        channel.qos.restore_visible(num=10, interval=1)  # (the new list beats, the old does not)
        assert channel._brpop_read() is True
        assert queue.buffer.popleft().payload == {"n": 7}
        assert r.exists(lost) == 0 and r.hlen("unacked") == 1 and r.llen("tq7") == 0


def test_a_message_that_is_not_kombus_is_dropped_once_and_the_channel_goes_on(redis_url, caplog):
    r = redis.Redis.from_url(redis_url)
    with _waiting(redis_url, "tq8", b"not JSON", payload={"n": 8}) as (queue, channel):
        with pytest.raises(Empty):
            channel._brpop_read()
        assert "not a kombu message" in caplog.text and "not JSON" not in caplog.text
        channel._brpop_start(timeout=1)
        assert channel._brpop_read() is True and queue.buffer.popleft().payload == {"n": 8}
        (landing,) = r.zrange("unacked_inflight", 0, -1)
        assert r.llen(landing) == 0 and r.llen("tq8") == 0


def test_a_message_whose_record_failed_is_left_to_the_sweep(private_redis):
    """Redis refusing the record (here: full, on a Redis of this test's own): the message stays in
    its landing list."""
    r = redis.Redis.from_url(private_redis.url)
    with _waiting(private_redis.url, "tq9", payload={"n": 9}) as (queue, channel):
        wait_until(lambda: r.llen("tq9") == 0, 5, "the message moved into the landing list")
        r.config_set("maxmemory-policy", "noeviction")
        r.config_set("maxmemory", 1)  # every write that may grow memory refused (OOM)
        with pytest.raises(Empty):  # the worker goes on
            channel._brpop_read()
        r.config_set("maxmemory", 0)
        (stuck,) = r.zrange("unacked_inflight", 0, -1)
        assert r.llen(stuck) == 1 and r.hlen("unacked") == 0  # kept, not dropped
        r.zadd("unacked_inflight", {stuck: time.time() - 2})  # a visibility timeout later
        time.sleep(broker_transport.REFUSED_S)  # (no landing write meanwhile)
        channel.qos.restore_visible(num=10, interval=1)
        channel._brpop_start(timeout=1)
        assert channel._brpop_read() is True and queue.buffer.popleft().payload == {"n": 9}
        assert r.exists(stuck) == 0 and r.hlen("unacked") == 1


@pytest.mark.parametrize("refused", ["heartbeat", "move"])
def test_a_full_redis_stops_no_worker_and_loses_nothing(refused, caplog, private_redis):
    """Redis full under noeviction (deploy/redis/redis.conf) refuses the heartbeat and BLMOVE, which
    may grow memory: the channel takes nothing meanwhile (kombu's BRPOP would, and lose it to a
    refused record), waits a second between tries, raises nothing, and lands it when Redis can."""
    r = redis.Redis.from_url(private_redis.url)
    with Connection(private_redis.url, transport=TRANSPORT, transport_options=LANDING) as conn:
        queue, channel = _queue(conn, "tq10"), conn.default_channel
        queue._consume()
        queue.put({"n": 10, "pad": "secret"})
        r.config_set("maxmemory-policy", "noeviction")
        r.config_set("maxmemory", 1)
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            r.lpush("tq10", b"{}")  # full: a write that may grow memory is refused
        channel._beaten_at = 0.0 if refused == "heartbeat" else time.monotonic() + 60
        _registered(channel)
        started = time.monotonic()
        for _ in range(4):  # a refused try, then a wait of REFUSED_S
            channel._brpop_start()
            with pytest.raises(Empty):
                channel._brpop_read()
        assert time.monotonic() - started >= 2 * broker_transport.REFUSED_S  # no hot loop
        assert r.llen("tq10") == 1 and r.hlen("unacked") == 0
        assert caplog.text.count("Redis refused") == 1 and "secret" not in caplog.text
        r.config_set("maxmemory", 0)
        time.sleep(broker_transport.REFUSED_S)
        channel._beaten_at = 0.0
        channel._brpop_start()
        assert channel._brpop_read() is True and queue.buffer.popleft().payload["n"] == 10
        (landing,) = r.zrange("unacked_inflight", 0, -1)
        assert r.llen(landing) == 0 and r.llen("tq10") == 0 and r.hlen("unacked") == 1
        queue.close()


@pytest.mark.parametrize("raw", [
    b'{"body": "", "properties": {"delivery_tag": "t1"}}',  # no delivery_info
    b'{"body": "!not base64", "properties": {"delivery_tag": "t2", "body_encoding": "base64",'
    b' "delivery_info": {"exchange": "", "routing_key": "tq14"}}}',
])
def test_a_message_kombu_cannot_read_is_dropped_once_too(redis_url, raw, caplog):
    """Shaped like kombu's but unreadable by it: dropped and logged, not left to the sweep, which
    would put it back to stop the next worker a visibility timeout later."""
    r = redis.Redis.from_url(redis_url)
    with _waiting(redis_url, "tq14", raw, payload={"n": 14}) as (queue, channel):
        with pytest.raises(Empty):
            channel._brpop_read()
        assert "not a kombu message" in caplog.text
        (landing,) = r.zrange("unacked_inflight", 0, -1)
        assert r.llen(landing) == 0 and r.hlen("unacked") == 0
        channel._brpop_start(timeout=1)
        assert channel._brpop_read() is True and queue.buffer.popleft().payload == {"n": 14}
        assert r.llen(landing) == 0 and r.llen("tq14") == 0
