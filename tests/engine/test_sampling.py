"""Adaptive sampling: the exact sample at which the rate relaxes and at which it rises again."""

import math

import pytest

from tierguard.engine.detector import Engine, EngineConfig, Situation
from tierguard.engine.sampling import EVIDENCE_FACTOR, WARNING, Evidence, Rate, SamplingConfig, choose

CONFIG = SamplingConfig(mode="adaptive", fixed_rate=0.05, rate_min=0.01, rate_max=0.10, min_samples=50,
                        settle_s=3600)
NOW = 1_000_000.0


def evidence(engine, state, **kw):
    return Evidence(statistic=engine.statistic(state), samples=state.get("n", 0),
                    seconds_since_change=None, **kw)


def test_rate_relaxes_after_enough_evidence_and_rises_at_the_warning_level():
    engine = Engine(EngineConfig(threshold=0.9, healthy=0.93, min_samples=50))
    sit = Situation("candidate", pinned=False, now=NOW)
    state: dict = {}
    rates = []
    for _ in range(150):
        state, _ = engine.update(state, True, sit)
        rates.append(choose(CONFIG, evidence(engine, state)).rate)
    relaxed = EVIDENCE_FACTOR * CONFIG.min_samples  # the 100th sample (index 99) relaxes it
    assert rates[:relaxed - 1] == [0.10] * (relaxed - 1) and rates[relaxed - 1:] == [0.01] * (151 - relaxed)
    # Disagreements push the statistic up by m units each: the rate rises at exactly ceil(WARNING·h/m).
    d = engine.design
    needed = math.ceil(WARNING * d.h / d.m)
    seen = []
    for _ in range(needed):
        state, decision = engine.update(state, False, sit)
        seen.append(choose(CONFIG, evidence(engine, state)))
        assert decision.action == "hold"
    assert [x.rate for x in seen] == [0.01] * (needed - 1) + [0.10]
    assert seen[-1].reason.startswith("drift suspected: CUSUM at")


def test_fixed_mode_route_changes_and_thin_evidence():
    fixed = SamplingConfig(mode="fixed", fixed_rate=0.07)
    assert choose(fixed, Evidence(0.9, 0, None)).rate == 0.07
    assert choose(CONFIG, Evidence(0.0, 99, None)).reason == (
        "evidence thin: 99 of 100 samples since the evidence last restarted")
    assert choose(CONFIG, Evidence(0.0, 500, 600.0)).rate == 0.10   # ten minutes after a flip
    assert choose(CONFIG, Evidence(0.0, 500, 7200.0)).rate == 0.01


def test_the_budget_caps_the_rate():
    budgeted = SamplingConfig(**{**CONFIG.__dict__, "budget_usd_per_day": 5.0})
    # 100,000 calls/day × $0.002 a sample: $5/day allows 2.5 % of the calls
    capped = choose(budgeted, Evidence(0.8, 500, None, calls_per_day=100_000, cost_per_sample_usd=0.002))
    assert capped.rate == pytest.approx(0.025) and "capped by the budget $5/day" in capped.reason
    calm = choose(budgeted, Evidence(0.0, 500, None, calls_per_day=100_000, cost_per_sample_usd=0.002))
    assert calm.rate == 0.01  # under the cap: untouched
    assert choose(budgeted, Evidence(0.8, 500, None)).rate == 0.10  # no volume yet: no cap


def test_bench_watching_runs_the_real_engine_and_reports_every_setup():
    from tierguard.bench.watching import watching_figures

    fig = watching_figures(seed=3, months=1)
    assert set(fig["setups"]) == {"fixed_sync", "fixed_batch", "adaptive_batch", "adaptive_sync"}
    fixed, batch = fig["setups"]["fixed_sync"], fig["setups"]["fixed_batch"]
    assert batch["watching_share"] == pytest.approx(fixed["watching_share"] / 2, rel=0.05)  # discount
    for s in fig["setups"].values():
        assert set(s) >= {"watching_share", "detection_hours", "false_flips"}
        assert set(s["detection_hours"]) == {"median", "max"}
    assert fig["setups"]["adaptive_batch"]["watching_share"] < fixed["watching_share"] / 3


def test_after_an_evidence_reset_the_rate_is_at_its_maximum_for_the_cooldown():
    what = "prompt fingerprint a -> b"
    healthy = dict(statistic=0.0, samples=500, seconds_since_change=None, reset=what)
    assert choose(CONFIG, Evidence(**healthy, seconds_since_reset=None)).rate == 0.01
    just = choose(CONFIG, Evidence(**healthy, seconds_since_reset=600.0))
    assert just == Rate(0.10, "evidence reset 10 min ago (prompt fingerprint a -> b)")
    assert choose(CONFIG, Evidence(**healthy, seconds_since_reset=3599.0)).rate == 0.10
    assert choose(CONFIG, Evidence(**healthy, seconds_since_reset=3600.0)).rate == 0.01
