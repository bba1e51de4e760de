"""``bench hotpath``'s measuring parts: the clock on the wire, what a side adds, the runs' spread."""

import time

import httpx2

from tierguard.bench.hotpath import WireClock, added, interleaved, spread


def test_the_wire_clock_takes_the_transport_and_the_body_out_of_a_call():
    def slow(request: httpx2.Request) -> httpx2.Response:
        time.sleep(0.02)
        return httpx2.Response(200, content=b"x" * 10)

    wire = WireClock(httpx2.MockTransport(slow))
    client = httpx2.Client(transport=wire)

    def call() -> None:
        client.get("http://sim.local/")
        time.sleep(0.005)  # the caller's side

    timed = interleaved({"one": call}, wire, 5, warm=1)
    whole, side = timed["one"]
    assert all(w >= 0.025 for w in whole)
    assert all(0.004 <= s < 0.015 for s in side)  # the 20 ms on the wire are not the caller's


def test_added_and_spread():
    bare, side = [1.0e-3] * 99 + [2.0e-3], [1.01e-3] * 98 + [1.5e-3, 3.0e-3]
    more = added(side, bare)
    assert more["p50"] == 10.0 and more["max"] == 2000.0 and more["p99"] > 0
    runs = [{"a": 1.0, "b": 5}, {"a": 3.0, "b": 4}, {"a": 2.0, "b": 9}]
    assert spread(runs, ("a", "b")) == {"a": 2.0, "b": 5, "spread": {"a": [1.0, 3.0], "b": [4, 9]}}


def test_the_process_cpu_figure_counts_what_the_publishers_thread_does(simulator, redis_url, sqlite_url,
                                                                      monkeypatch):
    """Work handed to the publisher's thread is off the caller's side but not free: ``cpu_added_us``
    counts it (here 2 ms of CPU settling each call there)."""
    from tierguard.app.tap import Tap
    from tierguard.bench.hotpath import CHECKS_SCENARIO, process_cpu
    from tierguard.config import get_settings
    from tierguard.policy import parse_policy

    settle = Tap.settle

    def costly(self, *call):
        spin = time.thread_time() + 0.002
        while time.thread_time() < spin:
            pass
        return settle(self, *call)

    monkeypatch.setattr(Tap, "settle", costly)
    server = simulator(**CHECKS_SCENARIO)
    policy = parse_policy({"defaults": {"sample_rate": 0.05}, "categories": {"bench": {}}})
    added_us = process_cpu(server.base_url, get_settings(redis_url=redis_url, database_url=sqlite_url),
                           policy, calls=60)
    assert 1500 <= added_us < 20_000
