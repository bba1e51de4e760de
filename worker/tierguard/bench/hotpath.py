"""``tierguard bench hotpath``: the SDK wrapper against the bare SDK call, interleaved per call.

What tierguard adds is everything a wrapped call costs the caller beyond the bare call: each
call's time on the wire (inside the HTTP transport, :class:`WireClock`: the request sent, the
simulator's answer, its bytes read) is taken out of its whole time, and the wrapped calls' time on
the caller's side is compared with the bare calls' (medians, 99th percentiles). Nothing inside
tierguard is clocked, so no instrument of its own slows it, and the SDK's extra work the wrapper
causes counts too. The median ratio compares whole calls. Work the wrapper hands to the
publisher's thread is not on the caller's side: ``cpu_added_us`` is what it adds to the process's
CPU time per call on every thread (:func:`process_cpu`). Each figure is measured in ``runs``
runs (three by default): the figures are the runs' medians, with each run's and their spread.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx2

from tierguard.app import publisher
from tierguard.bench.stats import pct
from tierguard.policy import live
from tierguard.routing import routes

US = 1e6
GOALS = {"median_ratio": 1.01, "p50_added_us": 10, "p99_added_us": 100, "redis_down_p99_added_us": 1000,
         "checks_p50_added_us": 50}
RUN_KEYS = ("median_ratio", "bare_median_us", "wrapped_median_us", "p50_added_us", "p99_added_us",
            "max_added_us", "redis_down_p50_added_us", "redis_down_p99_added_us", "cpu_added_us")


class WireClock(httpx2.BaseTransport):
    """An HTTP transport that adds up the time spent in the one it wraps — sending, waiting for the
    answer's head, reading its body — so that a call's time on the caller's side is its whole
    time less :meth:`lap`."""

    def __init__(self, inner: httpx2.BaseTransport):
        self.inner, self.spent = inner, 0.0

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        t0 = time.perf_counter()
        try:
            response = self.inner.handle_request(request)
        finally:
            self.spent += time.perf_counter() - t0
        response.stream = _Timed(response.stream, self)  # type: ignore[arg-type]
        return response

    def close(self) -> None:
        self.inner.close()

    def lap(self) -> float:
        spent, self.spent = self.spent, 0.0
        return spent


class _Timed(httpx2.SyncByteStream):
    def __init__(self, inner: Any, clock: WireClock):
        self._inner, self._clock = inner, clock

    def __iter__(self) -> Iterator[bytes]:
        chunks = iter(self._inner)
        while True:
            t0 = time.perf_counter()
            chunk = next(chunks, None)
            self._clock.spent += time.perf_counter() - t0
            if chunk is None:
                return
            yield chunk

    def close(self) -> None:
        self._inner.close()


def clocked_sdk(base_url: str) -> tuple[Any, WireClock]:
    """An SDK client for the simulator whose transport is clocked (the SDK's own connection limits)."""
    import anthropic

    wire = WireClock(httpx2.HTTPTransport(limits=anthropic.DEFAULT_CONNECTION_LIMITS))
    client = anthropic.Anthropic(base_url=base_url, api_key="sk-bench", max_retries=0,
                                 http_client=anthropic.DefaultHttpxClient(transport=wire))
    return client, wire


def interleaved(calls: dict[str, Callable[[], Any]], wire: WireClock, n: int, warm: int = 200,
                clock: Callable[[], float] = time.perf_counter) -> dict[str, tuple[list[float], list[float]]]:
    """Each of ``calls`` ``n`` times, in turn (the order rotating): per name, (whole times, times on
    the caller's side: whole less the time on the wire). ``clock``: another clock for the whole
    times (``time.thread_time``: the caller's CPU time; its side times then mean nothing)."""
    names = list(calls)
    for _ in range(warm):  # connections, caches, the route table
        for name in names:
            calls[name]()
    out: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in names}
    for i in range(n):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            wire.lap()
            t0 = clock()
            calls[name]()
            whole = clock() - t0
            out[name][0].append(whole)
            out[name][1].append(whole - wire.lap())
    return out


def added(side: list[float], bare: list[float]) -> dict[str, float]:
    """What the caller's side of ``side``'s calls adds to ``bare``'s: at the median, at the 99th
    percentile, and its worst call against the bare median."""
    return {"p50": round((pct(side, 50) - pct(bare, 50)) * US, 1),
            "p99": round((pct(side, 99) - pct(bare, 99)) * US, 1),
            "max": round((max(side) - pct(bare, 50)) * US, 1)}


def spread(runs: list[dict[str, Any]], keys: tuple[str, ...] = RUN_KEYS) -> dict[str, Any]:
    """The runs' median of each figure, and ``spread``: {figure: [min, max]} over the runs."""
    out: dict[str, Any] = {key: round(statistics.median(r[key] for r in runs), 4) for key in keys}
    out["spread"] = {key: [min(r[key] for r in runs), max(r[key] for r in runs)] for key in keys}
    return out


BENCH_REQUEST = {"category": "bench", "max_tokens": 16, "system": "bench: classify",
                 "messages": [{"role": "user", "content": "The parcel arrived damaged."}]}
BARE_REQUEST = {k: v for k, v in BENCH_REQUEST.items() if k != "category"} | {"model": "claude-haiku-4-5"}


def measured(base_url: str, settings: Any, policy: Any, calls: int) -> tuple[dict[str, Any], dict]:
    """The wrapper (``settings``, ``policy``) and the bare call, interleaved: (timings, its stats)."""
    from tierguard.app.client import ShadowedAnthropic

    sdk, wire = clocked_sdk(base_url)
    wrapped = ShadowedAnthropic(sdk, settings=settings, policy=policy)
    timed = interleaved({"bare": lambda: sdk.messages.create(**BARE_REQUEST),
                         "wrapped": lambda: wrapped.messages.create(**BENCH_REQUEST)}, wire, calls)
    wrapped.tierguard_flush(10)
    stats = wrapped.tierguard_stats()
    wrapped.tierguard_close()
    return timed, stats


WRAPPER_THREADS = (publisher.THREAD, routes.THREAD, live.THREAD)


def process_cpu(base_url: str, settings: Any, policy: Any, calls: int) -> float:
    """What the wrapper adds to the process's CPU time per call, in µs: on the caller's thread
    (its CPU time around each call, bare and wrapped calls in turn, the wrapper's flushed at the
    end) and on the wrapper's own threads (the publisher's settling, counting and publishing, the
    route refreshes) — not the simulator's."""
    from tierguard.app.client import ShadowedAnthropic

    sdk, wire = clocked_sdk(base_url)
    wrapped = ShadowedAnthropic(sdk, settings=settings, policy=policy)
    each = {"bare": lambda: sdk.messages.create(**BARE_REQUEST),
            "wrapped": lambda: wrapped.messages.create(**BENCH_REQUEST)}
    interleaved(each, wire, 0, warm=100)
    wrapped.tierguard_flush(10)
    before = _threads_cpu()
    timed = interleaved(each, wire, calls, warm=0, clock=time.thread_time)
    started = time.thread_time()
    wrapped.tierguard_flush(10)
    flushed = time.thread_time() - started
    background = sum(cpu - before.get(ident, 0.0) for ident, cpu in _threads_cpu().items())
    wrapped.tierguard_close()
    caller = sum(timed["wrapped"][0]) + flushed - sum(timed["bare"][0])
    return round((caller + background) / calls * US, 1)


def _threads_cpu() -> dict[int, float]:
    """The CPU time so far of each of the wrapper's threads running in this process."""
    out = {}
    for thread in threading.enumerate():
        if thread.name in WRAPPER_THREADS and thread.ident is not None:
            try:
                out[thread.ident] = time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
            except OSError:  # (ended meanwhile)
                continue
    return out


def one_run(base_url: str, settings: Any, down: Any, policy: Any, calls: int) -> dict[str, Any]:
    """One run: the wrapper and the bare call, interleaved; then the same with Redis down
    (``down``: settings naming a port nothing listens on); then the process's CPU per call."""
    timed, stats = measured(base_url, settings, policy, calls)
    (bare_t, bare_side), (wrapped_t, wrapped_side) = timed["bare"], timed["wrapped"]
    more = added(wrapped_side, bare_side)
    timed, stats_down = measured(base_url, down, policy, calls)
    more_down = added(timed["wrapped"][1], timed["bare"][1])
    return {"median_ratio": round(pct(wrapped_t, 50) / pct(bare_t, 50), 4),
            "bare_median_us": round(pct(bare_t, 50) * US, 1),
            "wrapped_median_us": round(pct(wrapped_t, 50) * US, 1),
            "p50_added_us": more["p50"], "p99_added_us": more["p99"], "max_added_us": more["max"],
            "redis_down_p50_added_us": more_down["p50"], "redis_down_p99_added_us": more_down["p99"],
            "cpu_added_us": process_cpu(base_url, settings, policy, calls // 2),
            "published": stats.get("published", 0),
            "redis_down_dropped": stats_down.get("dropped_broker_down", 0)}


def hotpath_figures(calls: int = 5000, sample_rate: float = 0.05, runs: int = 3) -> dict[str, Any]:
    """The wrapper against the bare SDK call on a local zero-latency Messages API, interleaved, in
    ``runs`` runs; the answer checks' cost beside it (``checks``)."""
    import tempfile

    from tierguard.config import get_settings
    from tierguard.policy import parse_policy
    from tierguard.sim.models import Scenario
    from tierguard.sim.server import SimServer
    from tierguard.sim.servers import RedisServer, free_port
    from tierguard.store.db import make_engine, upgrade

    sim = SimServer(Scenario.from_dict(CHECKS_SCENARIO)).start_background()
    redis = RedisServer().start()
    db_url = f"sqlite:///{tempfile.mkdtemp(prefix='tierguard-bench-')}/bench.db"
    upgrade(make_engine(db_url))
    policy = parse_policy({"defaults": {"sample_rate": sample_rate}, "categories": {"bench": {}}})
    settings = get_settings(redis_url=redis.url, database_url=db_url)
    down = get_settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", database_url=db_url)
    try:
        each = [one_run(sim.base_url, settings, down, policy, calls) for _ in range(runs)]
        checks = [checks_figures(sim.base_url, settings, calls, sample_rate) for _ in range(runs)]
    finally:
        redis.stop()
        sim.stop()
    return {"calls_each": calls, "sample_rate": sample_rate, "runs_measured": runs, **spread(each),
            "published": sum(r["published"] for r in each),
            "redis_down_dropped": sum(r["redis_down_dropped"] for r in each),
            "runs": each, "goals": GOALS,
            "checks": {**spread(checks, CHECK_KEYS), "escalated": sum(c["escalated"] for c in checks),
                       "answer_bytes": 2048, "runs": checks}}


SCHEMA = {"type": "object", "required": ["vendor", "invoice_number", "total", "currency"],
          "properties": {"vendor": {"type": "string", "minLength": 1},
                         "invoice_number": {"type": "string", "pattern": "^INV-[0-9]+$"},
                         "total": {"type": "number", "minimum": 0},
                         "currency": {"enum": ["EUR", "USD", "GBP", "JPY"]},
                         "notes": {"type": "string"}}}
CHECKS_SCENARIO = {"categories": {name: {"kind": "json", "pad": 2048, "agreement": 1.0}
                                  for name in ("invoices-plain", "invoices-checked")}}
CHECK_KEYS = ("off_p50_added_us", "on_p50_added_us", "p50_added_us", "p99_added_us", "median_call_off_us",
              "median_call_on_us")


def checks_figures(base_url: str, settings: Any, calls: int, sample_rate: float) -> dict[str, Any]:
    """A 2 KB JSON answer, categorized, with the answer checks off and on (``escalate_on`` with a
    JSON Schema), interleaved per call with the bare call: what each adds, and what checking adds
    (on less off)."""
    from tierguard.app.client import ShadowedAnthropic
    from tierguard.policy import parse_policy

    json_cmp = {"type": "json"}
    policy = parse_policy({"defaults": {"sample_rate": sample_rate}, "categories": {
        "invoices-plain": {"comparator": json_cmp},
        "invoices-checked": {"comparator": {**json_cmp, "schema": SCHEMA},
                             "escalate_on": ["invalid", "empty", "refusal", "truncated"]}}})
    sdk, wire = clocked_sdk(base_url)
    wrapped = ShadowedAnthropic(sdk, settings=settings, policy=policy)
    ask = {"max_tokens": 1024, "messages": [{"role": "user", "content": "Invoice from Acme, 120 EUR."}]}

    def call(name: str, client: Any = wrapped, **more: Any) -> Callable[[], Any]:
        return lambda: client.messages.create(**more, system=f"{name}: extract the invoice", **ask)

    timed = interleaved({"bare": call("invoices-plain", sdk, model="claude-haiku-4-5"),
                         "off": call("invoices-plain", category="invoices-plain"),
                         "on": call("invoices-checked", category="invoices-checked")}, wire, calls)
    wrapped.tierguard_flush(10)
    stats = wrapped.tierguard_stats()
    wrapped.tierguard_close()
    (_, bare), (off_t, off), (on_t, on) = timed["bare"], timed["off"], timed["on"]
    return {"escalated": stats.get("escalated", 0),
            "off_p50_added_us": added(off, bare)["p50"], "on_p50_added_us": added(on, bare)["p50"],
            "p50_added_us": added(on, off)["p50"], "p99_added_us": added(on, off)["p99"],
            "median_call_off_us": round(pct(off_t, 50) * US, 1),
            "median_call_on_us": round(pct(on_t, 50) * US, 1)}
