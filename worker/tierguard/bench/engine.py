"""Benchmarks behind ``tierguard bench``: Monte Carlo figures for the engine, replay throughput.

Figures are measured in one run and printed with the goals they answer to.
The engine's CUSUM is simulated vectorised with the real engine's design
(k, m, h, min_samples); a cross-check first replays random streams through
:class:`~tierguard.engine.detector.Engine` itself and requires identical trigger indices.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from tierguard.engine.cusum import design
from tierguard.engine.detector import Engine, EngineConfig, Situation, fresh_state

HORIZON = 10_000


def _cusum_alarm(k: int, m: int, h: int, min_samples: int, stream: np.ndarray) -> np.ndarray:
    """Index of the first alarm per run (-1: none). ``stream`` is bool[runs, n] of disagreements."""
    runs, n = stream.shape
    s = np.zeros(runs, dtype=np.int64)
    first = np.full(runs, -1)
    for t in range(n):
        s = np.where(stream[:, t], s + m, np.maximum(s - k, 0))
        if t + 1 >= min_samples:
            hit = (first < 0) & (s >= h)
            first[hit] = t
    return first


def _window_alarm(window: int, threshold: float, stream: np.ndarray) -> np.ndarray:
    """Naive rule: flip when agreement over the last ``window`` samples is below ``threshold``."""
    agree = (~stream).astype(np.int32)
    csum = np.cumsum(agree, axis=1)
    sums = csum[:, window - 1:] - np.concatenate(
        [np.zeros((stream.shape[0], 1), np.int32), csum[:, :-window]], axis=1)
    below = sums < threshold * window
    first = np.where(below.any(axis=1), below.argmax(axis=1) + window - 1, -1)
    return first


def _streams(rng: np.random.Generator, runs: int, pre: float, post: float, change_at: int,
             n: int) -> np.ndarray:
    q = np.where(np.arange(n) < change_at, 1 - pre, 1 - post)
    return rng.random((runs, n)) < q


def cross_check(engine: Engine, runs: int = 20, n: int = 3000) -> None:
    """The vectorised CUSUM must flip on exactly the sample the real engine flips on."""
    d, c = engine.design, engine.config
    rng = np.random.default_rng(99)
    stream = _streams(rng, runs, 0.97, 0.85, 1000, n)
    fast = _cusum_alarm(d.k, d.m, d.h, c.min_samples, stream)
    for r in range(runs):
        state, found = fresh_state(), -1
        for t in range(n):
            state, dec = engine.update(state, not stream[r, t], Situation("candidate", False, 0.0))
            if dec.action == "demote":
                found = t
                break
        if found != fast[r]:
            raise AssertionError(f"run {r}: engine flipped at {found}, simulation at {fast[r]}")


def _delays(first: np.ndarray, change_at: int) -> tuple[float, float, int]:
    late = first[first >= change_at] - change_at + 1
    early = int((first >= 0).sum() - (first >= change_at).sum())
    if late.size == 0:
        return float("nan"), float("nan"), early
    return float(np.median(late)), float(np.percentile(late, 95)), early


def engine_figures(runs: int = 2000, seed: int = 7) -> dict[str, Any]:
    config = EngineConfig()
    engine = Engine(config)
    cross_check(engine)
    d = engine.design
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {"runs": runs, "design": {"k": d.k, "m": d.m, "h": d.h,
                                                    "healthy": d.healthy, "detect": d.detect,
                                                    "false_flip_rate": d.false_flip_rate}}
    for level in (0.93, 0.97):
        stream = _streams(rng, runs, level, level, 0, HORIZON)
        out[f"false_flips_{level}"] = {
            "engine": float((_cusum_alarm(d.k, d.m, d.h, config.min_samples, stream) >= 0).mean()),
            "window100": float((_window_alarm(100, config.threshold, stream) >= 0).mean()),
        }
    change_at = 1000
    for post in (0.85, 0.88):
        stream = _streams(rng, runs, 0.97, post, change_at, change_at + 4000)
        oracle = design(0.93, post, config.false_flip_rate, HORIZON)
        out[f"detect_0.97_to_{post}"] = {
            name: dict(zip(("median", "p95", "flipped_before_change"), _delays(first, change_at),
                           strict=True))
            for name, first in (
                ("engine", _cusum_alarm(d.k, d.m, d.h, config.min_samples, stream)),
                ("window100", _window_alarm(100, config.threshold, stream)),
                ("oracle", _cusum_alarm(oracle.k, oracle.m, oracle.h, config.min_samples, stream)),
            )}
    return out


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


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


def hotpath_figures(calls: int = 5000, sample_rate: float = 0.05) -> dict[str, Any]:
    """The wrapper against the bare SDK call on a local zero-latency Messages API, interleaved."""
    import tempfile

    import anthropic

    from tierguard.app.client import ShadowedAnthropic
    from tierguard.config import get_settings
    from tierguard.db import make_engine, upgrade
    from tierguard.ops.servers import RedisServer, free_port
    from tierguard.ops.sim_server import SimServer
    from tierguard.ops.simulate import Scenario
    from tierguard.policy import parse_policy

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
        "median_ratio": round(_pct(wrapped_t, 50) / _pct(bare_t, 50), 4),
        "bare_median_us": round(_pct(bare_t, 50) * us, 1),
        "wrapped_median_us": round(_pct(wrapped_t, 50) * us, 1),
        "p50_added_us": round(_pct(added, 50) * us, 1),
        "p99_added_us": round(_pct(added, 99) * us, 1),
        "max_added_us": round(max(added) * us, 1),
        "redis_down_p50_added_us": round(_pct(added_down, 50) * us, 1),
        "redis_down_p99_added_us": round(_pct(added_down, 99) * us, 1),
        "published": stats.get("published", 0),
        "redis_down_dropped": stats_down.get("dropped_broker_down", 0),
        "goals": {"median_ratio": 1.02, "p99_added_us": 200, "redis_down_p99_added_us": 1000},
    }
