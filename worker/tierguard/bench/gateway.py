"""``tierguard bench gateway``: what the gateway adds to a call, beside a plain reverse proxy.

The simulator (zero latency, its own process), Redis, a SQLite database and one
``tierguard gateway`` process run on this host, with the contenders of
:mod:`~tierguard.bench.contenders` (nginx, LiteLLM's proxy) that can run here. The same
request goes direct to the simulator and through each proxy, interleaved per round (the
order rotating; each turn opened by an untimed request, so no contender is charged for the work
of the one before) on one kept-alive connection each (category header set, the default 5 %
sampled, so routing and publishing are in tierguard's figure); streamed requests give the
time to the first event. LiteLLM (:data:`APART`), whose work after each answer runs on for
milliseconds on these cores — longer than any untimed request — is interleaved in a pass of its
own beside ``direct``, its added time against that pass's ``direct``: beside it, the others'
timings took its leftover work (nginx's added p99 came out below zero). Then, for each, a load
generator in its own process raises the number of connections until p99 passes 50 ms: ``rps``
is the most requests per second served under that, ``cpu_ms_per_request`` the proxy's CPU time
(its process and children) over the requests it served in that phase.

``contenders`` in the result: ``{NAME: {"added_p50_ms", "added_p99_ms", "ttfe_added_p50_ms",
"rps", "cpu_ms_per_request", …}}`` for ``direct``, ``tierguard``, ``nginx``, ``litellm``
(``{"unavailable": REASON}`` for one that cannot run); the older top-level keys are
tierguard's figures.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from tierguard.bench import contenders as others

GOALS = {"added_p50_ms": 0.5, "added_p99_ms": 2.0, "added_ttfe_ms": 0.5, "gateway_rps": 2500,
         "cpu_ms_per_request": 0.4, "nginx_ratio": 3.0}
BODY = {"model": "claude-opus-4-7", "max_tokens": 16, "system": "bench: classify",
        "messages": [{"role": "user", "content": "The parcel arrived damaged."}]}
HEADERS = {"x-api-key": "sk-bench", "anthropic-version": "2023-06-01", "x-tierguard-category": "bench"}
CONTENDERS = ("nginx", "litellm")
APART = ("litellm",)  # contenders timed in a pass of their own beside direct (see the docstring)
HOST = "127.0.0.1"


def _wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90.0) -> None:
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


class Proxy:
    """One contender as measured: its port, the process whose CPU is its cost, its requests."""

    def __init__(self, name: str, port: int, pid: int):
        from tierguard.bench.loadgen import request_bytes

        self.name, self.port, self.pid = name, port, pid
        self.plain = request_bytes(HOST, port, "/v1/messages", BODY, HEADERS)
        self.streamed = request_bytes(HOST, port, "/v1/messages", {**BODY, "stream": True}, HEADERS)
        self.times: list[float] = []
        self.ttfe: list[float] = []

    def probe(self) -> None:
        """One plain and one streamed request, each a 200 (else RuntimeError)."""
        from tierguard.bench.loadgen import Connection

        conn = Connection(HOST, self.port)
        try:
            for payload in (self.plain, self.streamed):
                status, _, first = conn.request(payload)
                if status != 200 or (payload is self.streamed and first is None):
                    raise RuntimeError(f"{self.name} answered {status}")
        finally:
            conn.close()


@contextlib.contextmanager
def _stack(folder: Path, sample_rate: float) -> Iterator[tuple[Proxy, Proxy]]:
    """The simulator and tierguard's gateway (with Redis, SQLite, a policy) while in the block."""
    from tierguard.sim.servers import RedisServer, free_port, stop_processes
    from tierguard.store.db import make_engine, upgrade

    redis = RedisServer().start()
    db_url = f"sqlite:///{folder}/bench.db"
    upgrade(make_engine(db_url))
    policy = folder / "policy.yaml"
    policy.write_text(yaml.safe_dump({"defaults": {"sample_rate": sample_rate},
                                      "categories": {"bench": {}}}))
    sim_port, gw_port = free_port(), free_port()
    env = {**os.environ, "TIERGUARD_REDIS_URL": redis.url, "TIERGUARD_DATABASE_URL": db_url,
           "TIERGUARD_POLICY": str(policy), "TIERGUARD_UPSTREAM_URL": f"http://{HOST}:{sim_port}"}
    procs: list[subprocess.Popen] = []
    try:
        for name, args, port in (("simulate", ["simulate", "serve", "--port", str(sim_port)], sim_port),
                                 ("gateway", ["gateway", "--port", str(gw_port), "--loglevel",
                                              "warning"], gw_port)):
            log = folder / f"{name}.log"
            proc = subprocess.Popen([sys.executable, "-m", "tierguard", *args], env=env,
                                    stdout=open(log, "w"), stderr=subprocess.STDOUT)
            procs.append(proc)
            _wait_ready(f"http://{HOST}:{port}/" + ("readyz" if name == "gateway" else "_sim/stats"),
                        proc, log)
        yield Proxy("direct", sim_port, procs[0].pid), Proxy("tierguard", gw_port, procs[1].pid)
    finally:
        stop_processes(procs)
        redis.stop()


def _start_others(folder: Path, names: tuple[str, ...], upstream: int, procs: list[subprocess.Popen],
                  ) -> tuple[list[Proxy], dict[str, str]]:
    """The contenders that serve here, and why each of the others cannot."""
    from tierguard.sim.servers import free_port

    serving: list[Proxy] = []
    unavailable: dict[str, str] = {}
    for name in names:
        port = free_port()
        try:
            if name == "nginx":
                proc, log, wait = others.start_nginx(folder, port, upstream), folder / "nginx/error.log", 15.0
            elif name == "litellm":
                proc, log, wait = (others.start_litellm(folder, port, upstream, BODY["model"],
                                                        HEADERS["x-api-key"]),
                                   folder / "litellm.log", 120.0)
            else:
                raise others.Unavailable(f"unknown contender {name!r}")
            procs.append(proc)
            proxy = Proxy(name, port, proc.pid)
            others.wait_serving(port, proc, log, wait, proxy.probe)
            serving.append(proxy)
        except others.Unavailable as err:
            unavailable[name] = str(err)
    return serving, unavailable


def _interleaved(proxies: list[Proxy], requests: int, warm: int) -> None:
    """Each round: a plain and a streamed request through every proxy, the order rotating. Each turn
    starts with an untimed plain request, so a timed one follows its own contender's, never another's:
    in a rotation each contender always comes after the same other one, and paid for the work that one
    did after its answer (``direct`` came after LiteLLM, so nginx's added came out below zero)."""
    from tierguard.bench.loadgen import Connection

    conns = {p.name: Connection(HOST, p.port) for p in proxies}
    try:
        for i in range(requests + warm):
            k = i % len(proxies)
            for proxy in proxies[k:] + proxies[:k]:
                conn = conns[proxy.name]
                conn.request(proxy.plain)  # what came before (another contender's work) is not timed
                status, total, _ = conn.request(proxy.plain)
                _, _, first = conn.request(proxy.streamed)
                if status != 200 or first is None:
                    raise RuntimeError(f"bad answer from {proxy.name}: {status}")
                if i >= warm:
                    proxy.times.append(total)
                    proxy.ttfe.append(first)
    finally:
        for conn in conns.values():
            conn.close()


def _timed(proxies: list[Proxy], requests: int) -> dict[str, Proxy]:
    """``proxies`` (``direct`` first) interleaved; those of :data:`APART` each in a pass of its own
    beside a ``direct`` of its own: {name: the ``direct`` it is measured against}."""
    warm = min(200, max(10, requests // 5))
    direct = proxies[0]
    _interleaved([p for p in proxies if p.name not in APART], requests, warm)
    beside = {}
    for proxy in proxies:
        if proxy.name in APART:
            beside[proxy.name] = own = Proxy(direct.name, direct.port, direct.pid)
            _interleaved([own, proxy], requests, warm)
    return beside


def _load(proxy: Proxy, levels: tuple[int, ...], seconds: float) -> dict[str, Any]:
    """Connections raised until p99 passes 50 ms; the best rate under it, CPU per request served."""
    from tierguard.bench.loadgen import run_in_process

    load, cpu, served = [], 0.0, 0
    for connections in levels:
        before = others.cpu_seconds(proxy.pid)
        level = run_in_process(HOST, proxy.port, proxy.plain, connections, seconds)
        cpu += others.cpu_seconds(proxy.pid) - before
        served += level["requests"]
        load.append(level)
        if level["p99_ms"] is None or level["p99_ms"] > 50 or level["errors"]:
            break
    rates = [lv["rps"] for lv in load if lv["p99_ms"] is not None and lv["p99_ms"] <= 50 and not lv["errors"]]
    return {"rps": max(rates) if rates else 0.0, "load": load,
            "cpu_ms_per_request": round(cpu * 1000 / served, 3) if served else None}


def _figures(proxy: Proxy, direct: Proxy, loaded: dict[str, Any]) -> dict[str, Any]:
    ms = 1000
    p50, d50 = statistics.median(proxy.times), statistics.median(direct.times)
    f50, df50 = statistics.median(proxy.ttfe), statistics.median(direct.ttfe)
    return {"p50_ms": round(p50 * ms, 3), "ttfe_p50_ms": round(f50 * ms, 3),
            "added_p50_ms": round((p50 - d50) * ms, 3),
            "added_p99_ms": round((_quantile(proxy.times, 0.99) - _quantile(direct.times, 0.99)) * ms, 3),
            "ttfe_added_p50_ms": round((f50 - df50) * ms, 3),
            "rps": loaded["rps"], "cpu_ms_per_request": loaded["cpu_ms_per_request"], "load": loaded["load"]}


def goals_met(tg: dict[str, Any], nginx: dict[str, Any] | None) -> dict[str, bool | None]:
    """Each goal of :data:`GOALS`, met or not (None: not measurable in this run, e.g. no nginx)."""
    floor = nginx.get("added_p50_ms") if nginx else None
    cpu = tg.get("cpu_ms_per_request")
    return {
        "added_p50_ms": tg["added_p50_ms"] <= GOALS["added_p50_ms"],
        "added_p99_ms": tg["added_p99_ms"] <= GOALS["added_p99_ms"],
        "added_ttfe_ms": tg["ttfe_added_p50_ms"] <= GOALS["added_ttfe_ms"],
        "gateway_rps": tg["rps"] >= GOALS["gateway_rps"],
        "cpu_ms_per_request": None if cpu is None else cpu <= GOALS["cpu_ms_per_request"],
        "nginx_ratio": None if floor is None else
        tg["added_p50_ms"] <= GOALS["nginx_ratio"] * max(floor, 0.0),
    }


def gateway_figures(requests: int = 3000, levels: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64),
                    seconds: float = 4.0, sample_rate: float = 0.05,
                    contenders: tuple[str, ...] = CONTENDERS) -> dict[str, Any]:
    from tierguard.sim.servers import stop_processes

    folder = Path(tempfile.mkdtemp(prefix="tierguard-bench-gw-"))
    procs: list[subprocess.Popen] = []
    with _stack(folder, sample_rate) as (direct, tierguard):
        try:
            serving, unavailable = _start_others(folder, contenders, direct.port, procs)
            proxies = [direct, tierguard, *serving]
            beside = _timed(proxies, requests)
            loaded = {p.name: _load(p, levels, seconds) for p in proxies}
        finally:
            stop_processes(procs)
    table: dict[str, Any] = {p.name: _figures(p, beside.get(p.name, direct), loaded[p.name])
                             for p in proxies}
    table.update({name: {"unavailable": why} for name, why in unavailable.items()})
    tg, nginx = table["tierguard"], table.get("nginx", {})
    ms = 1000
    return {
        "direct_p50_ms": table["direct"]["p50_ms"],
        "gateway_p50_ms": tg["p50_ms"],
        "added_p50_ms": tg["added_p50_ms"],
        "added_p99_ms": tg["added_p99_ms"],
        "added_ttfe_ms": tg["ttfe_added_p50_ms"],
        "direct_ttfe_p50_ms": round(statistics.median(direct.ttfe) * ms, 3),
        "gateway_ttfe_p50_ms": tg["ttfe_p50_ms"],
        "gateway_rps": tg["rps"],
        "requests": requests,
        "load": tg["load"],
        "sample_rate": sample_rate,
        "goals": GOALS,
        "contenders": table,
        "goals_met": goals_met(tg, None if "unavailable" in nginx else nginx or None),
    }
