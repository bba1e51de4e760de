"""``tierguard bench pipeline``: each run's figures beside its own floor, their medians and spread, on
real parts (a worker, the simulator, Redis, PostgreSQL); the categories agree as typical ones do."""

import pytest

from tierguard.bench.pipeline import EXERCISES, GOAL_CPU_RATIO, pipeline_figures, summary


def test_the_summary_gives_medians_sums_and_each_figures_spread():
    runs = [{"cpu_ratio": r, "worker_cpu_ms_per_comparison": 2 * r, "floor_cpu_ms_per_call": 2.0,
             "comparisons_per_s": 300.0, "p95_queue_delay_s": None, "agreement": 0.99, "sent": 10,
             "recorded": 10, "errors": 0}
            for r in (1.4, 1.1, 1.2)]
    out = summary(runs)
    assert out["cpu_ratio"] == 1.2 and out["worker_cpu_ms_per_comparison"] == 2.4
    assert out["sent"] == 30 and out["recorded"] == 30 and out["p95_queue_delay_s"] is None
    assert out["spread"]["cpu_ratio"] == [1.1, 1.4] and out["spread"]["p95_queue_delay_s"] is None
    assert out["runs"] == runs


def test_two_short_runs_each_measure_against_their_floor_in_half_a_minute():
    fig = pipeline_figures(seconds=5, rate=60, workers=1, concurrency=16, latency_ms=20, categories=4, runs=2)
    assert len(fig["runs"]) == 2 and fig["goal_cpu_ratio"] == GOAL_CPU_RATIO == 1.3
    for run in fig["runs"]:
        assert run["recorded"] == run["sent"] > 250 and run["errors"] == 0 and run["agreement"] > 0.9
        assert run["worker_cpu_ms_per_comparison"] > 0 and run["floor_cpu_ms_per_call"] > 0
        assert run["cpu_ratio"] == pytest.approx(run["worker_cpu_ms_per_comparison"]
                                                 / run["floor_cpu_ms_per_call"], abs=0.01)
    low, high = fig["spread"]["cpu_ratio"]
    assert low <= fig["cpu_ratio"] <= high
    assert fig["recorded"] == fig["sent"] and fig["exercises"] == list(EXERCISES)
    assert fig["route_changes"] == 0  # typical categories: they agree and stay where they are


def test_bad_arguments_name_the_field():
    with pytest.raises(ValueError, match="runs"):
        pipeline_figures(runs=0)
