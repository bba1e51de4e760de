"""``tierguard bench hotpath``: the SDK wrapper against the bare SDK call, interleaved per call.

``added``: the time spent in tierguard's own code on a call (routing in the resource, the tap's
steps on the wire), clocked around those functions; the median ratio compares whole calls.
"""

from __future__ import annotations

import time
from typing import Any

from tierguard.bench.stats import pct


class _Clock:
    """Adds up the time spent in tierguard's own code on the call path: the resources' routing
    (``named``) and the tap's steps on the wire (begin, answered, whole or streaming/feed/ended)."""

    def __init__(self) -> None:
        self.spent = 0.0
        self._undo: list[tuple[Any, str, Any]] = []

    def _wrap(self, owner: Any, name: str) -> None:
        real = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                self.spent += time.perf_counter() - t0

        self._undo.append((owner, name, real))
        setattr(owner, name, timed)

    def __enter__(self) -> _Clock:
        from tierguard.app import resources, tap

        self._wrap(resources, "named")
        for name in ("answered", "streaming", "whole", "feed", "ended"):
            self._wrap(tap.Call, name)
        self._wrap(tap.Tap, "begin")
        return self

    def __exit__(self, *exc: Any) -> None:
        for owner, name, real in reversed(self._undo):
            setattr(owner, name, real)

    def lap(self) -> float:
        spent, self.spent = self.spent, 0.0
        return spent


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
        wrapped = ShadowedAnthropic(sdk, settings=get_settings(redis_url=redis_url, database_url=db_url),
                                    policy=policy)
        bare_t, wrapped_t, added = [], [], []
        for _ in range(200):  # warm-up: connections, caches, the route table
            sdk.messages.create(**bare_request)
            wrapped.messages.create(**request)
        with _Clock() as clock:
            for i in range(n):
                for first in ((True, False) if i % 2 else (False, True)):
                    t0 = time.perf_counter()
                    if first:
                        sdk.messages.create(**bare_request)
                        bare_t.append(time.perf_counter() - t0)
                    else:
                        clock.lap()
                        wrapped.messages.create(**request)
                        wrapped_t.append(time.perf_counter() - t0)
                        added.append(clock.lap())
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
