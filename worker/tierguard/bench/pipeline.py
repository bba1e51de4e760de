"""``tierguard bench pipeline``: end to end on this host, and the worker's CPU per comparison.

Jobs are offered at a rate, as the wrapper's publisher sends them; worker
processes call a simulator that answers after a fixed latency, compare and write
PostgreSQL rows. In the same run a bare ``AsyncAnthropic`` call loop against the
same simulator gives the floor: what a call costs with nothing of tierguard's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

from tierguard.bench.stats import pct


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its waited-for children, from /proc."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def _floor(base_url: str, calls: int, concurrency: int) -> float:
    """CPU ms per call of a bare ``AsyncAnthropic`` loop against ``base_url`` (its own process)."""
    code = ("import sys; from tierguard.bench.pipeline import floor_loop; "
            "print(floor_loop(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))")
    done = subprocess.run([sys.executable, "-c", code, base_url, str(calls), str(concurrency)],
                          capture_output=True, text=True, check=True,
                          env={**os.environ, "ANTHROPIC_API_KEY": "sk-bench"})
    return float(done.stdout.strip().splitlines()[-1])


def floor_loop(base_url: str, calls: int, concurrency: int) -> float:
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
    asyncio.run(run())
    return spent[0] * 1000 / calls


def pipeline_figures(seconds: float = 20.0, rate: float = 700.0, workers: int = 1,
                     concurrency: int = 400, latency_ms: float = 1000.0,
                     categories: int = 8) -> dict[str, Any]:
    """Enqueue at ``rate`` jobs/s for ``seconds``; workers call a simulator that answers in
    ``latency_ms``, compare and write PostgreSQL rows. Throughput is measured after a warm-up."""
    import datetime as dt
    import os
    import subprocess
    import sys
    import tempfile
    import threading
    import uuid

    import sqlalchemy as sa
    import yaml

    from tierguard.config import get_settings
    from tierguard.contract.broker import BATCH_TASK, make_celery
    from tierguard.sim.servers import PostgresServer, RedisServer, free_port, stop_processes
    from tierguard.store.db import make_engine, session, upgrade
    from tierguard.store.tables import Sample

    labels = ["A1", "B2", "C3"]
    names = [f"bench-{i}" for i in range(categories)]
    folder = tempfile.mkdtemp(prefix="tierguard-bench-")
    scenario = os.path.join(folder, "scenario.yaml")
    with open(scenario, "w") as f:
        yaml.safe_dump({"latency_ms": latency_ms, "categories": {
            n: {"kind": "label", "labels": labels, "agreement": 0.99} for n in names}}, f)
    sim_port = free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    sim = subprocess.Popen([sys.executable, "-m", "tierguard", "simulate", "serve", "--port",
                            str(sim_port), "--scenario", scenario], stdout=subprocess.DEVNULL,
                           stderr=open(os.path.join(folder, "simulator.log"), "w"))
    redis = RedisServer().start()
    pg = PostgresServer().start()
    procs: list[subprocess.Popen] = [sim]
    try:
        db_url = pg.create_database("bench")
        upgrade(make_engine(db_url))
        policy_path = os.path.join(folder, "tierguard.yaml")
        with open(policy_path, "w") as f:
            yaml.safe_dump({"defaults": {"sample_rate": 1.0}, "categories": {
                n: {"comparator": {"type": "label", "labels": labels}} for n in names}}, f)
        env = {**os.environ, "TIERGUARD_DATABASE_URL": db_url, "TIERGUARD_REDIS_URL": redis.url,
               "TIERGUARD_POLICY": policy_path, "ANTHROPIC_BASE_URL": sim_url,
               "ANTHROPIC_API_KEY": "sk-bench"}
        for i in range(workers):
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "tierguard", "worker", "-c", str(concurrency),
                 "--loglevel", "WARNING"],
                env=env, stdout=open(os.path.join(folder, f"worker-{i}.log"), "w"),
                stderr=subprocess.STDOUT))
        app = make_celery(get_settings(redis_url=redis.url))
        ready_by = time.monotonic() + 60
        while len(app.control.ping(timeout=0.5) or []) < workers:
            dead = [p for p in procs if p.poll() is not None]
            time.sleep(0.2)
            if dead or time.monotonic() > ready_by:
                raise RuntimeError(f"workers did not start; see {folder}/worker-*.log")
        sent = [0]
        stop = threading.Event()

        def produce() -> None:  # as the wrapper's publisher does: batches of up to 50 jobs
            start = time.monotonic()
            with app.producer_or_acquire() as producer:
                while not stop.is_set() and time.monotonic() - start < seconds:
                    due = min(int((time.monotonic() - start) * rate) + 1, int(seconds * rate))
                    batch = []
                    while sent[0] < due and len(batch) < 50:
                        i = sent[0]
                        batch.append({
                            "job_id": uuid.uuid4().hex, "category": names[i % len(names)],
                            "served_model": "claude-haiku-4-5", "shadow_model": "claude-opus-4-7",
                            "request": {"max_tokens": 8, "system": f"{names[i % len(names)]}: label",
                                        "messages": [{"role": "user", "content": f"item {i}"}]},
                            "primary_text": labels[i % 3],
                            "requested_at": dt.datetime.now(dt.UTC).isoformat()})
                        sent[0] += 1
                    if batch:
                        app.send_task(BATCH_TASK, args=[batch], task_id=batch[0]["job_id"],
                                      producer=producer)
                    time.sleep(0.02)  # the publisher gathers for up to 20 ms

        cpu_start = sum(_cpu_seconds(p.pid) for p in procs[1:])
        t_start = time.time()
        producer_thread = threading.Thread(target=produce)
        producer_thread.start()
        producer_thread.join()
        engine = make_engine(db_url)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with session(engine) as s:
                done = s.execute(sa.select(sa.func.count()).select_from(Sample)).scalar_one()
            if done >= sent[0]:
                break
            time.sleep(0.5)
        worker_cpu = sum(_cpu_seconds(p.pid) for p in procs[1:]) - cpu_start
        floor = _floor(sim_url, calls=min(3000, max(500, int(rate * 4))), concurrency=concurrency)
        warm = dt.datetime.fromtimestamp(t_start + 3, dt.UTC)
        end = dt.datetime.fromtimestamp(t_start + seconds, dt.UTC)
        with session(engine) as s:
            rows = s.execute(sa.select(Sample.created_at, Sample.requested_at, Sample.shadow_latency_ms,
                                       Sample.error)).all()
        import urllib.request

        with urllib.request.urlopen(sim_url + "/_sim/stats") as response:
            in_flight_max = json.loads(response.read())["in_flight_max"]
    finally:
        stop_processes(procs, timeout=30)
        redis.stop()
        pg.destroy()

    def aware(t: dt.datetime) -> dt.datetime:
        return t if t.tzinfo else t.replace(tzinfo=dt.UTC)

    in_window = [r for r in rows if warm <= aware(r[0]) <= end]
    delays = [(aware(r[0]) - aware(r[1])).total_seconds() - (r[2] or 0) / 1000 for r in rows if r[1]]
    per_comparison = worker_cpu * 1000 / max(1, len(rows))
    return {"workers": workers, "concurrency": concurrency, "offered_per_s": rate,
            "worker_cpu_ms_per_comparison": round(per_comparison, 3),
            "floor_cpu_ms_per_call": round(floor, 3),
            "cpu_ratio": round(per_comparison / floor, 3) if floor else None, "goal_cpu_ratio": 1.5,
            "seconds": seconds, "sent": sent[0], "recorded": len(rows),
            "errors": sum(1 for r in rows if r[3]),
            "comparisons_per_s": round(len(in_window) / (end - warm).total_seconds(), 1),
            "in_flight_max": in_flight_max,
            "p95_queue_delay_s": round(pct(delays, 95), 3) if delays else None,
            "shadow_call_p50_ms": round(pct([r[2] for r in rows if r[2]], 50), 1) if rows else None,
            "shadow_call_p95_ms": round(pct([r[2] for r in rows if r[2]], 95), 1) if rows else None,
            "shadow_latency_ms": latency_ms, "goal_comparisons_per_s": 500}
