"""The vectorised stream run makes exactly the per-sample engine's decisions, at the same samples."""

import numpy as np
import pytest

from tierguard.engine.detector import Engine, EngineConfig, Situation, fresh_state
from tierguard.engine.replay import StreamRunner


def moved(sit, decision):
    """The route model both runs share: a change flips who serves; a pin pins the reference."""
    if not decision.changes_route or not decision.applied:
        return sit
    if decision.pin:
        return Situation("reference", True, sit.now)
    return Situation("reference" if decision.action == "demote" else "candidate", False, sit.now)


def scalar(engine, agree, times, sit):
    state, out = fresh_state(), []
    for i, (a, t) in enumerate(zip(agree.tolist(), times.tolist(), strict=True)):
        state, d = engine.update(state, a, Situation(sit.serving, sit.pinned, t))
        if d.action != "hold":
            out.append((i, d))
            sit = moved(sit, d)
    return out, state, sit


def vectorised(engine, agree, times, sit):
    out = []
    current = [sit]

    def on_event(i, d):
        out.append((i, d))
        current[0] = moved(current[0], d)
        return current[0]

    runner = StreamRunner(engine, {})
    final = runner.run(agree, times, sit, on_event)
    return out, runner.state, final


def stream(seed, n, levels):
    """Agreement that moves between ``levels`` in equal phases; one sample a second."""
    rng = np.random.default_rng(seed)
    p = np.repeat(levels, -(-n // len(levels)))[:n]
    return rng.random(n) < p, np.arange(n, dtype=float) * 1.0 + 1_700_000_000


CONFIGS = [
    EngineConfig(),
    EngineConfig(auto_promote=True, cooldown_s=300, promote_min_samples=100),
    EngineConfig(auto_promote=True, cooldown_s=0, flap_limit=2, flap_window_s=10**9),
    EngineConfig(observe=True),
    EngineConfig(threshold=0.8, healthy=0.85, min_samples=10, promote_threshold=0.9),
]


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_same_decisions_same_samples_same_state(config, seed):
    engine = Engine(config)
    agree, times = stream(seed, 30_000, [0.97, 0.80, 0.99, 0.60, 0.97, 0.88])
    expected, state, sit = scalar(engine, agree, times, Situation("candidate", False, 0))
    got, vstate, vsit = vectorised(engine, agree, times, Situation("candidate", False, 0))
    assert [(i, d.action, d.rule, d.applied, d.pin) for i, d in got] == [
        (i, d.action, d.rule, d.applied, d.pin) for i, d in expected]
    assert [d.reason for _, d in got] == [d.reason for _, d in expected]
    assert vstate == state and vsit == sit
    assert {type(v) for v in vstate.values()} <= {int, float, bool, str, list, type(None)}  # JSON
    assert len(expected) >= 2  # the stream does make the engine decide


def test_a_pinned_or_other_route_only_counts():
    engine = Engine(EngineConfig())
    agree, times = stream(4, 5000, [0.5])
    for sit in (Situation("reference", True, 0), Situation("other", False, 0)):
        expected, state, _ = scalar(engine, agree, times, sit)
        got, vstate, _ = vectorised(engine, agree, times, sit)
        assert got == expected == [] and vstate == state


@pytest.mark.parametrize("seed", [5, 6])
def test_a_withdrawn_eligibility_replays_exactly(seed):
    engine = Engine(EngineConfig())
    agree, times = stream(seed, 6000, [0.99, 0.5, 0.99])
    expected, state, _ = scalar(engine, agree, times, Situation("reference", False, 0))
    got, vstate, _ = vectorised(engine, agree, times, Situation("reference", False, 0))
    assert [a for _, a in expected if a.action == "eligible"] and got == expected and vstate == state
    # Eligible, withdrawn when a block of 200 agrees half the time, eligible again on recovery.
    assert [d.action for _, d in expected] == ["eligible", "eligible"]
    assert expected[0][0] < 2000 < 4000 <= expected[1][0]
