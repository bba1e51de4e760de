"""``tierguard bench pipeline``: each run's figures beside its own floor, their medians and spread, on
real parts (a worker, the simulator, Redis, PostgreSQL); the categories agree as typical ones do."""

import pytest

from tierguard.bench.pipeline import EXERCISES, GOAL_CPU_RATIO, pipeline_figures, summary


def test_the_summary_gives_medians_sums_and_each_figures_spread():
    runs = [{"cpu_ratio": r, "worker_cpu_ms_per_comparison": 2 * r, "floor_cpu_ms_per_call": 2.0,
             "cpu_ratio_uvloop_floor": r + 0.5, "floor_uvloop_cpu_ms_per_call": 1.9,
             "cpu_ratio_tuned_gc_floor": r + 0.25, "floor_tuned_gc_cpu_ms_per_call": 1.7,
             "comparisons_per_s": 300.0, "p95_queue_delay_s": None, "agreement": 0.99, "sent": 10,
             "recorded": 10, "errors": 0}
            for r in (1.4, 1.1, 1.2)]
    out = summary(runs)
    assert out["cpu_ratio"] == 1.2 and out["worker_cpu_ms_per_comparison"] == 2.4
    assert out["sent"] == 30 and out["recorded"] == 30 and out["p95_queue_delay_s"] is None
    assert out["spread"]["cpu_ratio"] == [1.1, 1.4] and out["spread"]["p95_queue_delay_s"] is None
    assert out["spread"]["cpu_ratio_uvloop_floor"] == [1.6, 1.9]
    assert out["spread"]["cpu_ratio_tuned_gc_floor"] == [1.35, 1.65]
    assert out["runs"] == runs


def test_two_short_runs_each_measure_against_their_floor_in_half_a_minute():
    fig = pipeline_figures(seconds=5, rate=60, workers=1, concurrency=16, latency_ms=20, categories=4, runs=2)
    assert len(fig["runs"]) == 2 and fig["goal_cpu_ratio"] == GOAL_CPU_RATIO == 1.3
    for run in fig["runs"]:
        assert run["recorded"] == run["sent"] > 250 and run["errors"] == 0 and run["agreement"] > 0.9
        assert run["worker_cpu_ms_per_comparison"] > 0 and run["floor_cpu_ms_per_call"] > 0
        assert run["cpu_ratio"] == pytest.approx(run["worker_cpu_ms_per_comparison"]
                                                 / run["floor_cpu_ms_per_call"], abs=0.01)
        assert run["floor_uvloop_cpu_ms_per_call"] > 0  # the same bare loop on uvloop, beside it
        assert run["cpu_ratio_uvloop_floor"] == pytest.approx(run["worker_cpu_ms_per_comparison"]
                                                              / run["floor_uvloop_cpu_ms_per_call"], abs=0.01)
        assert run["floor_tuned_gc_cpu_ms_per_call"] > 0  # and under the worker's collector settings
        assert run["cpu_ratio_tuned_gc_floor"] == pytest.approx(
            run["worker_cpu_ms_per_comparison"] / run["floor_tuned_gc_cpu_ms_per_call"], abs=0.01)
    for key in ("cpu_ratio", "cpu_ratio_uvloop_floor", "cpu_ratio_tuned_gc_floor"):
        low, high = fig["spread"][key]
        assert low <= fig[key] <= high
    assert fig["recorded"] == fig["sent"] and fig["exercises"] == list(EXERCISES)
    assert fig["route_changes"] == 0  # typical categories: they agree and stay where they are


def test_bad_arguments_name_the_field():
    with pytest.raises(ValueError, match="runs"):
        pipeline_figures(runs=0)


def test_a_bench_stopped_by_sigterm_stops_the_worker_and_database_it_started():
    """``timeout`` sends SIGTERM: the bench's worker, simulator, Redis and PostgreSQL stop with it."""
    import os
    import pathlib
    import shutil
    import signal
    import subprocess
    import sys
    import tempfile
    import time

    import psutil

    from tests.helpers import wait_until

    tmp_path = pathlib.Path(tempfile.mkdtemp(prefix="tierguard-sigterm-"))
    tmp_path.chmod(0o755)  # PostgreSQL runs as its own user when the tests run as root

    bench = subprocess.Popen([sys.executable, "-m", "tierguard", "bench", "pipeline", "--seconds", "5",
                              "--runs", "1", "--json"], env={**os.environ, "TMPDIR": str(tmp_path)},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    me = psutil.Process(bench.pid)

    def cmdline(p):
        try:
            return p.cmdline()
        except psutil.Error:  # gone, or a zombie
            return []

    def started():  # the worker is up (after Redis and PostgreSQL)
        return any("worker" in cmdline(c) for c in me.children(recursive=True))

    started_by_it = []
    try:
        wait_until(started, 60, "the bench's worker")
        pids = list(tmp_path.glob("tierguard-pg-*/postmaster.pid"))
        assert pids, "the bench's PostgreSQL runs in TMPDIR"
        postmaster = int(pids[0].read_text().split()[0])
        started_by_it = me.children(recursive=True) + [psutil.Process(postmaster)]
        bench.send_signal(signal.SIGTERM)
        assert bench.wait(60) == 128 + signal.SIGTERM
        time.sleep(0.5)
        alive = [cmdline(p) for p in started_by_it if cmdline(p)]
        assert alive == [], f"left running: {alive}"
    finally:
        if bench.poll() is None:
            bench.kill()
        for p in started_by_it:  # what a failure here would leave
            if cmdline(p):
                p.kill()
        shutil.rmtree(tmp_path, ignore_errors=True)
