"""``tierguard bench promotion``: how often the promotion rule promotes a candidate it should not.

Seeded streams of one category each, starting on the reference with ``auto_promote: true``, the
engine consulted after every sample for up to 20,000 samples: at true agreement 0.93 and 0.94
(below the default ``promote_threshold`` 0.95) every promotion is false; at 0.98 and 0.965 the
figure is how many samples a promotion takes. The streams run through
:class:`~tierguard.engine.replay.StreamRunner`, which makes the per-sample engine's decisions at
the same samples (tests/engine/test_stream_replay.py); a cross-check first feeds a few streams to
:meth:`Engine.update` itself and requires the same promotions. The rule before this one (a
Wilson 95 % bound looked at after every sample, restarting when clearly below) runs beside it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tierguard.engine.detector import Engine, EngineConfig, Situation, fresh_state
from tierguard.engine.replay import StreamRunner

SAMPLES = 20_000
FALSE_LEVELS = (0.93, 0.94)
TRUE_LEVELS = (0.98, 0.965)
GOALS = {"false_promotion_rate": 0.01, "median_at_0.98": 600, "promoted_at_0.965": 0.90}


def _promoted_at(engine: Engine, agree: np.ndarray) -> int:
    """Samples until the engine promotes (0: never) on one stream, starting on the reference."""
    found = [0]

    def on_event(i: int, decision: Any) -> Situation:
        if decision.action == "promote" and not found[0]:
            found[0] = i + 1
        return Situation("candidate" if found[0] else "reference", False, 0.0)

    times = np.zeros(len(agree))
    runner = StreamRunner(engine, {})
    runner.run(agree, times, Situation("reference", False, 0.0), on_event)
    return found[0]


def _per_sample(engine: Engine, agree: np.ndarray) -> int:
    state = fresh_state()
    for i, x in enumerate(agree.tolist()):
        state, d = engine.update(state, x, Situation("reference", False, 0.0))
        if d.action == "promote":
            return i + 1
    return 0


def _wilson(a: np.ndarray, n: np.ndarray, z: float = 1.96) -> tuple[np.ndarray, np.ndarray]:
    """:func:`~tierguard.engine.detector.wilson` over arrays (n > 0)."""
    p = a / n
    centre = p + z * z / (2 * n)
    spread = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    denom = 1 + z * z / n
    return (centre - spread) / denom, (centre + spread) / denom


def _wilson_rule(agree: np.ndarray, threshold: float, min_samples: int) -> np.ndarray:
    """The former rule over many streams at once: samples to promotion per stream (0: never)."""
    runs, total = agree.shape
    n = np.zeros(runs, np.int64)
    a = np.zeros(runs, np.int64)
    first = np.zeros(runs, np.int64)
    for t in range(total):
        n += 1
        a += agree[:, t]
        low, high = _wilson(a, n)
        restart = (n >= 50) & (high < threshold)
        n[restart], a[restart] = 0, 0
        hit = (first == 0) & (n >= min_samples) & (low >= threshold)
        first[hit] = t + 1
    return first


def _summary(found: np.ndarray) -> dict[str, Any]:
    done = found[found > 0]
    return {"promoted": round(float(len(done) / len(found)), 4),
            "median": float(np.median(done)) if len(done) else None,
            "p95": float(np.percentile(done, 95)) if len(done) else None}


def promotion_figures(runs: int = 200, seed: int = 27, samples: int = SAMPLES,
                      baseline: bool = True) -> dict[str, Any]:
    """The issue's figures for the default policy; ``baseline`` adds the former rule's."""
    config = EngineConfig(auto_promote=True, cooldown_s=0)
    engine = Engine(config)
    rng = np.random.default_rng(seed)
    streams = {level: rng.random((runs, samples)) < level for level in FALSE_LEVELS + TRUE_LEVELS}
    check = streams[0.98][:3, :3000]
    for row in check:
        if _per_sample(engine, row) != _promoted_at(engine, row):
            raise AssertionError("the stream run and the per-sample engine disagree")
    found = {level: np.array([_promoted_at(engine, row) for row in streams[level]])
             for level in streams}
    fig: dict[str, Any] = {
        "runs": runs, "samples": samples, "seed": seed,
        "promote_threshold": config.promote_threshold, "promote_error_rate": config.promote_error_rate,
        "false_promotion_rate": {str(lv): _summary(found[lv])["promoted"] for lv in FALSE_LEVELS},
        "samples_to_promote": {str(lv): _summary(found[lv]) for lv in TRUE_LEVELS},
        "goals": GOALS}
    if baseline:
        former = {lv: _wilson_rule(streams[lv], config.promote_threshold, config.promote_min_samples)
                  for lv in streams}
        fig["wilson_peeking"] = {
            "false_promotion_rate": {str(lv): _summary(former[lv])["promoted"] for lv in FALSE_LEVELS},
            "samples_to_promote": {str(lv): _summary(former[lv]) for lv in TRUE_LEVELS}}
    fig["goals_met"] = _met(fig)
    return fig


def _met(fig: dict[str, Any]) -> bool:
    fast = fig["samples_to_promote"]
    return (max(fig["false_promotion_rate"].values()) <= GOALS["false_promotion_rate"]
            and (fast["0.98"]["median"] or 1e9) < GOALS["median_at_0.98"]
            and fast["0.965"]["promoted"] >= GOALS["promoted_at_0.965"])
