import random

import pytest
from tierguard.detector import WindowRule


def run(rule: WindowRule, outcomes, can_demote=True):
    state = rule.initial()
    for i, agree in enumerate(outcomes):
        state, decision = rule.update(state, agree, can_demote=can_demote)
        if decision.action != "hold":
            return i, decision
    return None, None


def test_no_decision_below_min_samples():
    rule = WindowRule(threshold=0.9, min_samples=50, window=100)
    index, _ = run(rule, [False] * 49)
    assert index is None
    index, decision = run(rule, [False] * 60)
    assert index == 49
    assert decision.samples == 50 and decision.agreement == 0.0


def test_triggers_on_the_exact_sample_that_crosses():
    rule = WindowRule(threshold=0.9, min_samples=10, window=20)
    stream = [True] * 20 + [False, True, False, False]
    # last 20 after index 22: 18/20 = 0.90 (not below); after index 23: 17/20 = 0.85
    index, decision = run(rule, stream)
    assert index == 23
    assert decision.agreement == pytest.approx(0.85)
    assert "below threshold 0.900" in decision.reason
    assert decision.rule == "window"


def test_seeded_drift_stream_trigger_index():
    rng = random.Random(42)
    stream = [rng.random() < 0.98 for _ in range(500)] + [rng.random() < 0.6 for _ in range(500)]
    index, _ = run(WindowRule(threshold=0.9, min_samples=50, window=100), stream)
    assert index == 525


def test_never_demotes_when_candidate_not_serving():
    index, _ = run(WindowRule(threshold=0.9, min_samples=5, window=10), [False] * 100,
                   can_demote=False)
    assert index is None


def test_restarts_after_demotion():
    rule = WindowRule(threshold=0.9, min_samples=5, window=10)
    state = rule.initial()
    for _ in range(5):
        state, decision = rule.update(state, False, can_demote=True)
    assert decision.action == "demote"
    assert state == rule.initial()
