"""``tierguard bench engine``: Monte Carlo figures for the engine's detection delay and false alarms.

Figures are measured in one run and printed with the goals they answer to.
The engine's CUSUM is simulated vectorised with the real engine's design
(k, m, h, min_samples); a cross-check first replays random streams through
:class:`~tierguard.engine.detector.Engine` itself and requires identical trigger indices.
"""

from __future__ import annotations

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
