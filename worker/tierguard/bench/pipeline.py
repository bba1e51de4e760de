"""``tierguard bench pipeline``: end to end on this host, and the worker's CPU per comparison.

Jobs are offered at a rate, as the wrapper's publisher sends them; worker
processes call a simulator that answers after a fixed latency, compare and write
PostgreSQL rows. The floor is a bare ``AsyncAnthropic`` call loop against the same
simulator: what a call costs with nothing of tierguard's. Each of ``runs`` runs
measures the floor just before and just after its pipeline window (their mean is
its floor), so a machine whose load drifts moves both sides of the ratio alike. The same loop on
uvloop's event loop (what a worker runs on by default) is measured beside it each time, and on
uvloop under the garbage collector's settings a worker runs with (``TIERGUARD_WORKER_GC_THRESHOLD``,
start-up's objects frozen): ``cpu_ratio`` is against the bare loop on asyncio's own loop,
``cpu_ratio_uvloop_floor`` against the bare loop on uvloop's, ``cpu_ratio_tuned_gc_floor`` against
the bare loop on uvloop with the worker's collector settings.

The bench's categories are what a category typically has now: a ``label``
comparator with every ``escalate_on`` check, half of them served by the reference
(their cheap rung's shadow answers are checked: its escalation stream), the served
answers' snapshots and the prompts' fingerprints tracked, and the challenger and
staged-rollout look-ups a sample goes through (none running).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from statistics import median
from typing import Any

from tierguard.bench.stats import pct

LABELS = ["A1", "B2", "C3"]
CHECKS = ["empty", "refusal", "truncated", "invalid"]
SNAPSHOTS = {"claude-haiku-4-5": "claude-haiku-4-5-20251001", "claude-opus-4-7": "claude-opus-4-7-20260115"}
EXERCISES = ("label comparator", "escalate_on: " + ", ".join(CHECKS) + " (half the categories served by "
             "the reference: their cheap rung's shadow answers checked)", "prompt fingerprints",
             "served and shadow snapshots", "challenger and rollout look-ups (none running)")
GOAL_CPU_RATIO = 1.3


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its waited-for children, from /proc."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


class _Floor:
    """A bare ``AsyncAnthropic`` loop in a process of its own, started once per bench: each
    :meth:`measure` runs ``calls`` calls against ``base_url`` and answers their CPU ms per call."""

    def __init__(self, base_url: str):
        code = ("import sys; from tierguard.bench.pipeline import floor_loop\n"
                "for line in sys.stdin:\n"
                "    calls, concurrency, loop, gc = line.split()\n"
                "    print(floor_loop(sys.argv[1], int(calls), int(concurrency), loop, int(gc)), flush=True)")
        self.proc = subprocess.Popen([sys.executable, "-c", code, base_url], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True,
                                     env={**os.environ, "ANTHROPIC_API_KEY": "sk-bench"})

    def measure(self, calls: int, concurrency: int, loop: str = "asyncio", gc_threshold: int = 0) -> float:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{calls} {concurrency} {loop} {gc_threshold}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the floor's process ended (exit code {self.proc.wait()})")
        return float(line)


def floor_loop(base_url: str, calls: int, concurrency: int, loop: str = "asyncio",
               gc_threshold: int = 0) -> float:
    """CPU ms per call of ``calls`` bare SDK calls, ``concurrency`` at a time, on ``loop``'s event
    loop (``asyncio`` or ``uvloop``); with ``gc_threshold``, under the garbage collector's settings a
    worker runs with (:mod:`tierguard.pipeline.collector`), Python's own restored after."""
    import gc

    from tierguard.pipeline import collector

    before = gc.get_threshold()
    if gc_threshold:
        collector.tune(gc_threshold)
        collector.settle()
    try:
        return _floor_run(base_url, calls, concurrency, loop)
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def _floor_run(base_url: str, calls: int, concurrency: int, loop: str) -> float:
    import asyncio
    import resource

    import anthropic
    import httpx2

    async def run() -> None:
        limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        client = anthropic.AsyncAnthropic(base_url=base_url, max_retries=0,
                                          http_client=anthropic.DefaultAsyncHttpxClient(limits=limits))
        gate = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with gate:
                await client.messages.create(model="claude-opus-4-7", max_tokens=8, system="floor",
                                             messages=[{"role": "user", "content": f"item {i}"}])

        await one(-1)  # connections, imports, caches: outside the measurement
        usage = resource.getrusage(resource.RUSAGE_SELF)
        start = usage.ru_utime + usage.ru_stime
        await asyncio.gather(*(one(i) for i in range(calls)))
        usage = resource.getrusage(resource.RUSAGE_SELF)
        spent[0] = usage.ru_utime + usage.ru_stime - start
        await client.close()

    spent = [0.0]
    from tierguard.pipeline.fanout import new_loop

    with asyncio.Runner(loop_factory=new_loop(loop)) as runner:
        runner.run(run())
    return spent[0] * 1000 / calls


@dataclass
class _Stack:
    """The simulator, Redis, PostgreSQL and the workers of one bench, and its Celery app."""

    folder: str
    names: list[str]
    sim_url: str = ""
    db_url: str = ""
    procs: list[subprocess.Popen] = field(default_factory=list)
    servers: list[Any] = field(default_factory=list)
    app: Any = None
    floor: Any = None  # a _Floor
    gc_threshold: int = 0  # the workers' TIERGUARD_WORKER_GC_THRESHOLD (the tuned floor's too)
    truth: Any = None  # a tierguard.sim.models.Simulator of the same scenario: the served answers

    @property
    def workers(self) -> list[subprocess.Popen]:
        return [p for p in self.procs[1:] if p is not getattr(self.floor, "proc", None)]

    def stop(self) -> None:
        from tierguard.sim.servers import stop_processes

        stop_processes(self.procs, timeout=30)
        for server in self.servers:
            server.destroy() if hasattr(server, "destroy") else server.stop()


def _write_yaml(path: str, data: dict) -> str:
    import yaml

    with open(path, "w") as f:
        yaml.safe_dump(data, f)
    return path


def _files(stack: _Stack, latency_ms: float) -> str:
    """The simulator's scenario (its path returned; its answers kept as ``stack.truth``) and the
    policy, in the bench's folder: every category checks ``escalate_on`` on its cheap rung's shadow
    answers; odd ones start on the reference."""
    from tierguard.sim.models import Scenario, Simulator

    data = {"latency_ms": latency_ms, "snapshots": SNAPSHOTS, "categories": {n: {
        "kind": "label", "labels": LABELS, "agreement": 0.99, "broken": {"rate": 0.01, "kinds": ["invalid"]}}
        for n in stack.names}}
    scenario = _write_yaml(os.path.join(stack.folder, "scenario.yaml"), data)
    stack.truth = Simulator(Scenario.from_dict(data))
    _write_yaml(os.path.join(stack.folder, "tierguard.yaml"), {
        "defaults": {"sample_rate": 1.0, "escalate_on": CHECKS}, "categories": {
            n: {"comparator": {"type": "label", "labels": LABELS},
                **({"start_on": "reference"} if i % 2 else {})} for i, n in enumerate(stack.names)}})
    return scenario


def _start(stack: _Stack, workers: int, concurrency: int, latency_ms: float) -> None:
    from tierguard.config import get_settings
    from tierguard.contract.broker import make_celery
    from tierguard.sim.servers import PostgresServer, RedisServer, free_port
    from tierguard.store.db import make_engine, upgrade

    scenario = _files(stack, latency_ms)
    sim_port = free_port()
    stack.sim_url = f"http://127.0.0.1:{sim_port}"
    stack.procs.append(subprocess.Popen(
        [sys.executable, "-m", "tierguard", "simulate", "serve", "--port", str(sim_port), "--scenario",
         scenario], stdout=subprocess.DEVNULL, stderr=open(os.path.join(stack.folder, "simulator.log"), "w")))
    redis = RedisServer().start()
    stack.servers.append(redis)
    pg = PostgresServer().start()
    stack.servers.append(pg)
    stack.db_url = pg.create_database("bench")
    upgrade(make_engine(stack.db_url))
    env = {**os.environ, "TIERGUARD_DATABASE_URL": stack.db_url, "TIERGUARD_REDIS_URL": redis.url,
           "TIERGUARD_POLICY": os.path.join(stack.folder, "tierguard.yaml"),
           "ANTHROPIC_BASE_URL": stack.sim_url, "ANTHROPIC_API_KEY": "sk-bench"}
    for i in range(workers):
        stack.procs.append(subprocess.Popen(
            [sys.executable, "-m", "tierguard", "worker", "-c", str(concurrency), "--loglevel", "WARNING"],
            env=env, stdout=open(os.path.join(stack.folder, f"worker-{i}.log"), "w"),
            stderr=subprocess.STDOUT))
    stack.app = make_celery(get_settings(redis_url=redis.url))
    stack.floor = _Floor(stack.sim_url)
    stack.gc_threshold = get_settings().worker_gc_threshold
    stack.procs.append(stack.floor.proc)
    ready_by = time.monotonic() + 60
    while len(stack.app.control.ping(timeout=0.5) or []) < workers:
        dead = [p for p in stack.procs if p.poll() is not None]
        time.sleep(0.2)
        if dead or time.monotonic() > ready_by:
            raise RuntimeError(f"workers did not start; see {stack.folder}/worker-*.log")


def _job(stack: _Stack, run: int, i: int) -> dict[str, Any]:
    """The ``i``-th job of run ``run``, as the wrapper sends it: a category served by its candidate
    (even) is shadowed to the reference, one served by the reference (odd) to the candidate; the
    served answer is the right one (what the reference answers), so categories agree as they
    typically do and no route moves."""
    n = i % len(stack.names)
    served, shadow = ("claude-haiku-4-5", "claude-opus-4-7")[::1 if n % 2 == 0 else -1]
    request = {"max_tokens": 8, "system": f"{stack.names[n]}: label",
               "messages": [{"role": "user", "content": f"item {i}"}]}
    return {"job_id": f"r{run}-{uuid.uuid4().hex}", "category": stack.names[n], "served_model": served,
            "shadow_model": shadow, "served_snapshot": SNAPSHOTS[served], "request": request,
            "primary_text": stack.truth.answer({**request, "model": "claude-opus-4-7"})[1],
            "primary_input_tokens": 20, "primary_output_tokens": 2,
            "primary_latency_ms": 1000.0, "requested_at": dt.datetime.now(dt.UTC).isoformat()}


def _produce(stack: _Stack, run: int, seconds: float, rate: float) -> int:
    """Offer jobs at ``rate`` for ``seconds`` as the wrapper's publisher sends them (a message once
    ``TIERGUARD_PUBLISH_JOBS_PER_MESSAGE`` jobs are due, or ``TIERGUARD_PUBLISH_GATHER_S`` after the
    first of them was); how many were sent."""
    from tierguard.config import get_settings
    from tierguard.contract.broker import BATCH_TASK, job_reprs

    settings = get_settings()
    per, gather = settings.publish_jobs_per_message, settings.publish_gather_s
    sent, total, start = 0, int(seconds * rate), time.monotonic()
    with stack.app.producer_or_acquire() as producer:
        while sent < total:
            send_at = start + min((sent + per - 1) / rate, sent / rate + gather)
            time.sleep(max(0.0, send_at - time.monotonic()))
            due = min(int((time.monotonic() - start) * rate) + 1, total)
            batch = [_job(stack, run, i) for i in range(sent, min(due, sent + per))]
            sent += len(batch)
            stack.app.send_task(BATCH_TASK, args=[batch], task_id=batch[0]["job_id"], producer=producer,
                                **job_reprs(len(batch)))
    return sent


def _count(stack: _Stack, run: int, rows: bool = False) -> Any:
    """Run ``run``'s recorded samples: how many, or (``rows``) their times, latencies and errors."""
    import sqlalchemy as sa

    from tierguard.store.db import make_engine, session
    from tierguard.store.tables import Sample

    engine = make_engine(stack.db_url)
    mine = Sample.job_id.like(f"r{run}-%")
    try:
        with session(engine) as s:
            if not rows:
                return s.execute(sa.select(sa.func.count()).select_from(Sample).where(mine)).scalar_one()
            return s.execute(sa.select(Sample.created_at, Sample.requested_at, Sample.shadow_latency_ms,
                                       Sample.error, Sample.agree).where(mine)).all()
    finally:
        engine.dispose()


def _recorded(stack: _Stack, run: int, sent: int, stall_s: float = 30.0) -> None:
    """Wait until every job of the run is recorded (the next run's CPU must not pay for this one's
    backlog), or until none has been for ``stall_s``."""
    done, moved = 0, time.monotonic()
    while done < sent and time.monotonic() - moved < stall_s:
        time.sleep(0.5)
        now = _count(stack, run)
        done, moved = now, time.monotonic() if now > done else moved


def _one_run(stack: _Stack, run: int, seconds: float, rate: float, concurrency: int) -> dict[str, Any]:
    """One pipeline window between two halves of the floor; its figures."""
    calls = min(3000, max(500, int(rate * 4))) // 2
    floor_before = stack.floor.measure(calls, concurrency)
    uvloop_before = stack.floor.measure(calls, concurrency, "uvloop")
    tuned_before = stack.floor.measure(calls, concurrency, "uvloop", stack.gc_threshold)
    cpu_start = sum(_cpu_seconds(p.pid) for p in stack.workers)
    t_start = time.time()
    sent = _produce(stack, run, seconds, rate)
    _recorded(stack, run, sent)
    worker_cpu = sum(_cpu_seconds(p.pid) for p in stack.workers) - cpu_start
    floors = ((floor_before + stack.floor.measure(calls, concurrency)) / 2,
              (uvloop_before + stack.floor.measure(calls, concurrency, "uvloop")) / 2,
              (tuned_before + stack.floor.measure(calls, concurrency, "uvloop", stack.gc_threshold)) / 2)
    return _figures(_count(stack, run, rows=True), sent, worker_cpu, floors, t_start, seconds)


def _figures(rows: list[Any], sent: int, worker_cpu: float, floors: tuple[float, float, float],
             t_start: float, seconds: float) -> dict[str, Any]:
    def aware(t: dt.datetime) -> dt.datetime:
        return t if t.tzinfo else t.replace(tzinfo=dt.UTC)

    warm = dt.datetime.fromtimestamp(t_start + 3, dt.UTC)
    end = dt.datetime.fromtimestamp(t_start + seconds, dt.UTC)
    in_window = [r for r in rows if warm <= aware(r[0]) <= end]
    delays = [(aware(r[0]) - aware(r[1])).total_seconds() - (r[2] or 0) / 1000 for r in rows if r[1]]
    latencies = [r[2] for r in rows if r[2]]
    per_comparison = worker_cpu * 1000 / max(1, len(rows))
    floor, on_uvloop, tuned = floors
    return {"worker_cpu_ms_per_comparison": round(per_comparison, 3),
            "floor_cpu_ms_per_call": round(floor, 3),
            "cpu_ratio": round(per_comparison / floor, 3) if floor else None,
            "floor_uvloop_cpu_ms_per_call": round(on_uvloop, 3),
            "cpu_ratio_uvloop_floor": round(per_comparison / on_uvloop, 3) if on_uvloop else None,
            "floor_tuned_gc_cpu_ms_per_call": round(tuned, 3),
            "cpu_ratio_tuned_gc_floor": round(per_comparison / tuned, 3) if tuned else None,
            "sent": sent, "recorded": len(rows), "errors": sum(1 for r in rows if r[3]),
            "agreement": round(sum(1 for r in rows if r[4]) / max(1, len(rows)), 3),
            "comparisons_per_s": round(len(in_window) / (end - warm).total_seconds(), 1),
            "p95_queue_delay_s": round(pct(delays, 95), 3) if delays else None,
            "shadow_call_p50_ms": round(pct(latencies, 50), 1) if latencies else None,
            "shadow_call_p95_ms": round(pct(latencies, 95), 1) if latencies else None}


SPREAD = ("cpu_ratio", "worker_cpu_ms_per_comparison", "floor_cpu_ms_per_call", "cpu_ratio_uvloop_floor",
          "floor_uvloop_cpu_ms_per_call", "cpu_ratio_tuned_gc_floor", "floor_tuned_gc_cpu_ms_per_call",
          "comparisons_per_s", "p95_queue_delay_s")


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The runs' figures: each one's median at the top (a count: the sum), its min–max under
    ``spread``, and the runs themselves."""
    out: dict[str, Any] = {}
    for key in runs[0]:
        values = [r[key] for r in runs if r[key] is not None]
        if key in ("sent", "recorded", "errors"):
            out[key] = sum(values)
        else:
            out[key] = round(median(values), 3) if values else None
    out["spread"] = {k: [min(v), max(v)] if (v := [r[k] for r in runs if r[k] is not None]) else None
                     for k in SPREAD}
    out["runs"] = runs
    return out


def pipeline_figures(seconds: float = 20.0, rate: float = 700.0, workers: int = 1,
                     concurrency: int = 400, latency_ms: float = 1000.0,
                     categories: int = 8, runs: int = 3) -> dict[str, Any]:
    """``runs`` times: enqueue at ``rate`` jobs/s for ``seconds``; workers call a simulator that
    answers in ``latency_ms``, compare and write PostgreSQL rows, between two halves of the floor.
    Throughput is measured after a warm-up; each run's jobs are all recorded before the next."""
    if runs < 1:
        raise ValueError(f"runs: {runs} is not a number of runs (1 or more)")
    stack = _Stack(tempfile.mkdtemp(prefix="tierguard-bench-"), [f"bench-{i}" for i in range(categories)])
    try:
        _start(stack, workers, concurrency, latency_ms)
        done = [_one_run(stack, run, seconds, rate, concurrency) for run in range(runs)]
        import urllib.request

        with urllib.request.urlopen(stack.sim_url + "/_sim/stats") as response:
            in_flight_max = json.loads(response.read())["in_flight_max"]
        moved = _route_changes(stack)
    finally:
        stack.stop()
    return {"workers": workers, "concurrency": concurrency, "offered_per_s": rate, **summary(done),
            "goal_cpu_ratio": GOAL_CPU_RATIO, "seconds": seconds, "in_flight_max": in_flight_max,
            "shadow_latency_ms": latency_ms, "goal_comparisons_per_s": 500, "exercises": list(EXERCISES),
            "route_changes": moved}


def _route_changes(stack: _Stack) -> int:
    """Route changes the bench made (none: its categories agree, as typical ones do)."""
    import sqlalchemy as sa

    from tierguard.store.db import make_engine, session
    from tierguard.store.tables import RouteChange

    engine = make_engine(stack.db_url)
    try:
        with session(engine) as s:
            return s.execute(sa.select(sa.func.count()).select_from(RouteChange)
                             .where(RouteChange.rule != "policy")).scalar_one()
    finally:
        engine.dispose()
