"""``tierguard bench hotpath``: the SDK wrapper against the bare SDK call, interleaved per call."""

from __future__ import annotations

import time
from typing import Any

from tierguard.bench.stats import pct


class _TimedMessages:
    """Records how long each inner SDK call takes, so the wrapper's own cost can be isolated."""

    def __init__(self, messages: Any):
        self._messages = messages
        self.last = 0.0

    def create(self, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return self._messages.create(**kwargs)
        finally:
            self.last = time.perf_counter() - t0


class _TimedClient:
    def __init__(self, sdk: Any):
        self.messages = _TimedMessages(sdk.messages)


def hotpath_figures(calls: int = 5000, sample_rate: float = 0.05) -> dict[str, Any]:
    """The wrapper against the bare SDK call on a local zero-latency Messages API, interleaved."""
    import tempfile

    import anthropic

    from tierguard.app.client import ShadowedAnthropic
    from tierguard.config import get_settings
    from tierguard.policy import parse_policy
    from tierguard.sim.models import Scenario
    from tierguard.sim.server import SimServer
    from tierguard.sim.servers import RedisServer, free_port
    from tierguard.store.db import make_engine, upgrade

    sim = SimServer(Scenario()).start_background()
    redis = RedisServer().start()
    folder = tempfile.mkdtemp(prefix="tierguard-bench-")
    db_url = f"sqlite:///{folder}/bench.db"
    upgrade(make_engine(db_url))
    policy = parse_policy({"defaults": {"sample_rate": sample_rate}, "categories": {"bench": {}}})
    request = {"category": "bench", "max_tokens": 16, "system": "bench: classify",
               "messages": [{"role": "user", "content": "The parcel arrived damaged."}]}
    bare_request = {k: v for k, v in request.items() if k != "category"} | {"model": "claude-haiku-4-5"}

    def measure(redis_url: str, n: int) -> tuple[list[float], list[float], list[float], dict]:
        sdk = anthropic.Anthropic(base_url=sim.base_url, api_key="sk-bench", max_retries=0)
        timed = _TimedClient(sdk)
        wrapped = ShadowedAnthropic(timed, settings=get_settings(redis_url=redis_url, database_url=db_url),
                                    policy=policy)
        bare_t, wrapped_t, added = [], [], []
        for _ in range(200):  # warm-up: connections, caches, the route table
            sdk.messages.create(**bare_request)
            wrapped.messages.create(**request)
        for i in range(n):
            for first in ((True, False) if i % 2 else (False, True)):
                t0 = time.perf_counter()
                if first:
                    sdk.messages.create(**bare_request)
                    bare_t.append(time.perf_counter() - t0)
                else:
                    wrapped.messages.create(**request)
                    total = time.perf_counter() - t0
                    wrapped_t.append(total)
                    added.append(total - timed.messages.last)
        wrapped.tierguard_flush(10)
        stats = wrapped.tierguard_stats()
        wrapped.tierguard_close()
        return bare_t, wrapped_t, added, stats

    try:
        bare_t, wrapped_t, added, stats = measure(redis.url, calls)
        _, _, added_down, stats_down = measure(f"redis://127.0.0.1:{free_port()}/0", calls)
    finally:
        redis.stop()
        sim.stop()
    us = 1e6
    return {
        "calls_each": calls, "sample_rate": sample_rate,
        "median_ratio": round(pct(wrapped_t, 50) / pct(bare_t, 50), 4),
        "bare_median_us": round(pct(bare_t, 50) * us, 1),
        "wrapped_median_us": round(pct(wrapped_t, 50) * us, 1),
        "p50_added_us": round(pct(added, 50) * us, 1),
        "p99_added_us": round(pct(added, 99) * us, 1),
        "max_added_us": round(max(added) * us, 1),
        "redis_down_p50_added_us": round(pct(added_down, 50) * us, 1),
        "redis_down_p99_added_us": round(pct(added_down, 99) * us, 1),
        "published": stats.get("published", 0),
        "redis_down_dropped": stats_down.get("dropped_broker_down", 0),
        "goals": {"median_ratio": 1.02, "p99_added_us": 200, "redis_down_p99_added_us": 1000},
    }
