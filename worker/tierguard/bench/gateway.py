"""``tierguard bench gateway``: what the gateway adds to a call, and how much one process serves.

The simulator (zero latency, its own process), Redis, a SQLite database and one
``tierguard gateway`` process run on this host. The same request goes direct to
the simulator and through the gateway, interleaved on two kept-alive connections
(category header set, the default 5 % sampled, so routing and publishing are in
the figure); streamed requests give the time to the first event. Then a load
generator in its own process raises the number of connections until p99 passes
50 ms: ``gateway_rps`` is the most requests per second served under that.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

GOALS = {"added_p50_ms": 1.0, "added_p99_ms": 5.0, "added_ttfe_ms": 2.0, "gateway_rps": 1000}
BODY = {"model": "claude-opus-4-7", "max_tokens": 16, "system": "bench: classify",
        "messages": [{"role": "user", "content": "The parcel arrived damaged."}]}
HEADERS = {"x-api-key": "sk-bench", "anthropic-version": "2023-06-01", "x-tierguard-category": "bench"}


def _wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 30.0) -> None:
    import httpx2

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[3]} exited:\n{log.read_text()[-2000:]}")
        try:
            if httpx2.get(url, timeout=1).status_code in (200, 404):
                return
        except httpx2.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"not ready after {timeout}s:\n{log.read_text()[-2000:]}")


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def gateway_figures(requests: int = 3000, levels: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64),
                    seconds: float = 4.0, sample_rate: float = 0.05) -> dict[str, Any]:
    from tierguard.bench.loadgen import Connection, request_bytes, run_in_process
    from tierguard.sim.servers import RedisServer, free_port, stop_processes
    from tierguard.store.db import make_engine, upgrade

    folder = Path(tempfile.mkdtemp(prefix="tierguard-bench-gw-"))
    redis = RedisServer().start()
    db_url = f"sqlite:///{folder}/bench.db"
    upgrade(make_engine(db_url))
    policy = folder / "policy.yaml"
    policy.write_text(yaml.safe_dump({"defaults": {"sample_rate": sample_rate},
                                      "categories": {"bench": {}}}))
    sim_port, gw_port = free_port(), free_port()
    env = {**os.environ, "TIERGUARD_REDIS_URL": redis.url, "TIERGUARD_DATABASE_URL": db_url,
           "TIERGUARD_POLICY": str(policy), "TIERGUARD_UPSTREAM_URL": f"http://127.0.0.1:{sim_port}"}
    procs = []
    try:
        for name, args, port in (("simulate", ["simulate", "serve", "--port", str(sim_port)], sim_port),
                                 ("gateway", ["gateway", "--port", str(gw_port), "--loglevel",
                                              "warning"], gw_port)):
            log = folder / f"{name}.log"
            proc = subprocess.Popen([sys.executable, "-m", "tierguard", *args], env=env,
                                    stdout=open(log, "w"), stderr=subprocess.STDOUT)
            procs.append(proc)
            _wait_ready(f"http://127.0.0.1:{port}/" + ("readyz" if name == "gateway" else "_sim/stats"),
                        proc, log)
        host = "127.0.0.1"
        plain = {p: request_bytes(host, p, "/v1/messages", BODY, HEADERS) for p in (sim_port, gw_port)}
        streamed = {p: request_bytes(host, p, "/v1/messages", {**BODY, "stream": True}, HEADERS)
                    for p in (sim_port, gw_port)}
        conns = {p: Connection(host, p) for p in (sim_port, gw_port)}
        times: dict[int, list[float]] = {sim_port: [], gw_port: []}
        ttfe: dict[int, list[float]] = {sim_port: [], gw_port: []}
        for i in range(requests + 200):  # the first 200 warm up connections and caches
            order = (sim_port, gw_port) if i % 2 else (gw_port, sim_port)
            for port in order:
                status, total, _ = conns[port].request(plain[port])
                _, _, first = conns[port].request(streamed[port])
                if status != 200 or first is None:
                    raise RuntimeError(f"bad answer from port {port}: {status}")
                if i >= 200:
                    times[port].append(total)
                    ttfe[port].append(first)
        for c in conns.values():
            c.close()
        load = []
        for connections in levels:
            level = run_in_process(host, gw_port, plain[gw_port], connections, seconds)
            load.append(level)
            if level["p99_ms"] is None or level["p99_ms"] > 50 or level["errors"]:
                break
        served = [lv["rps"] for lv in load if lv["p99_ms"] is not None and lv["p99_ms"] <= 50
                  and not lv["errors"]]
    finally:
        stop_processes(procs)
        redis.stop()
    ms = 1000
    d, g = times[sim_port], times[gw_port]
    return {
        "direct_p50_ms": round(statistics.median(d) * ms, 3),
        "gateway_p50_ms": round(statistics.median(g) * ms, 3),
        "added_p50_ms": round((statistics.median(g) - statistics.median(d)) * ms, 3),
        "added_p99_ms": round((_quantile(g, 0.99) - _quantile(d, 0.99)) * ms, 3),
        "added_ttfe_ms": round((statistics.median(ttfe[gw_port]) - statistics.median(ttfe[sim_port]))
                               * ms, 3),
        "direct_ttfe_p50_ms": round(statistics.median(ttfe[sim_port]) * ms, 3),
        "gateway_ttfe_p50_ms": round(statistics.median(ttfe[gw_port]) * ms, 3),
        "gateway_rps": max(served) if served else 0.0,
        "requests": requests,
        "load": load,
        "sample_rate": sample_rate,
        "goals": GOALS,
    }
