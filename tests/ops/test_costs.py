"""Production's tokens, counted on every call without losing one, and `tierguard costs` from them."""

import datetime as dt
import threading

import anthropic
import pytest
import redis
import sqlalchemy as sa

import tierguard
from tests.helpers import last_json, samples, tg, traffic_totals, wait_until
from tierguard.app.publisher import Publisher
from tierguard.config import get_settings
from tierguard.store import traffic
from tierguard.store.db import make_engine, session
from tierguard.store.tables import Sample

LABELS = ["POSITIVE", "NEGATIVE", "NEUTRAL"]


totals = traffic_totals


def test_counters_lose_no_increment_under_concurrency(redis_url):
    publisher = Publisher(get_settings(redis_url=redis_url))
    usage = {"input_tokens": 7, "output_tokens": 3, "cache_read_input_tokens": 100}
    stop = threading.Event()

    def flusher():  # the publisher's thread, flushing as fast as it can meanwhile
        while not stop.is_set():
            publisher._flush_traffic()

    def caller():
        for _ in range(20_000):
            publisher.count("c", "m")
            publisher.add_usage("c", "m", usage)

    threads = [threading.Thread(target=caller) for _ in range(6)]
    flushing = threading.Thread(target=flusher)
    flushing.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    flushing.join()
    publisher._flush_traffic()
    got = totals(redis.Redis.from_url(redis_url))
    assert got == {("c", "m", "calls"): 120_000, ("c", "m", "input_tokens"): 840_000,
                   ("c", "m", "output_tokens"): 360_000, ("c", "m", "cache_read_tokens"): 12_000_000}


def test_counts_wait_out_a_redis_outage(private_redis):
    redis_server = private_redis
    publisher = Publisher(get_settings(redis_url=redis_server.url))
    redis_server.stop()
    publisher.count("c", "m")
    publisher.add_usage("c", "m", {"input_tokens": 5, "output_tokens": 1})
    publisher._flush_traffic()
    assert publisher.counts["traffic_reports_delayed"] == 1
    redis_server.start()
    publisher.close()  # its last flush: the same client, reconnected by itself
    assert totals(redis.Redis.from_url(redis_server.url)) == {
        ("c", "m", "calls"): 1, ("c", "m", "input_tokens"): 5, ("c", "m", "output_tokens"): 1}


def test_costs_are_measured_production_and_recorded_shadows(stack, simulator, sqlite_url, redis_url,
                                                           tmp_path):
    sim = simulator(categories={"sentiment": {"kind": "label", "labels": LABELS, "agreement": 0.9}})
    policy = {"defaults": {"sample_rate": 0.25},
              "categories": {"sentiment": {"comparator": {"type": "label", "labels": LABELS}}}}
    stack.configure(policy=policy, database_url=sqlite_url, base_url=sim.base_url)
    stack.start_worker(concurrency=4)
    client = tierguard.ShadowedAnthropic(anthropic.Anthropic(max_retries=0))
    seen = []  # (model, input, output) of every production answer, as the caller got it
    for i in range(40):
        kwargs = dict(category="sentiment", max_tokens=8, system="sentiment: classify",
                      messages=[{"role": "user", "content": f"review number {i} " + "word " * i}])
        if i % 2:
            m = client.messages.create(**kwargs)
        else:
            with client.messages.stream(**kwargs) as stream:
                m = stream.get_final_message()
        seen.append((m.model, m.usage.input_tokens, m.usage.output_tokens))
    client.tierguard_close()
    r = redis.Redis.from_url(redis_url)
    from tierguard.policy import load_policy

    loaded = load_policy(stack.env["TIERGUARD_POLICY"])
    engine = make_engine(sqlite_url)
    wait_until(lambda: samples(sqlite_url) == client.tierguard_stats()["published"], 60, "the samples")
    traffic.fold(engine, r, dt.datetime.now(dt.UTC) + dt.timedelta(minutes=3), loaded)
    out = last_json(tg("costs", "--since", "1h", "--json", env=stack.env_for_cli(), cwd=tmp_path).stdout)
    production = sum(loaded.cost_usd(model, i, o) for model, i, o in seen)
    reference = sum(loaded.cost_usd("claude-opus-4-7", i, o) for _, i, o in seen)
    with session(engine) as s:
        shadow = s.execute(sa.select(sa.func.sum(Sample.shadow_cost_usd))).scalar_one()
    got = out["categories"]["sentiment"]
    assert got["production_usd"] == pytest.approx(production, rel=1e-6)
    assert got["shadow_usd"] == pytest.approx(shadow, rel=1e-6) and shadow > 0
    assert got["savings_usd"] == pytest.approx(reference - production, rel=1e-6)  # haiku serves all
    assert got["watching_share"] == pytest.approx(shadow / production, abs=1e-4)
    assert got["calls"] == 40 and got["calls_without_usage"] == 0
    assert out["total"]["production_usd"] == got["production_usd"]
    assert set(out) >= {"since", "categories", "total"}
    assert {"production_usd", "shadow_usd", "watching_share", "savings_usd"} <= set(out["total"])
