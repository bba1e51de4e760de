"""``tierguard bench hotpath``: the SDK wrapper against the bare SDK call, interleaved per call.

``added``: the time spent in tierguard's own code on a call (routing in the resource, the tap's
steps on the wire), clocked around those functions; the median ratio compares whole calls.
"""

from __future__ import annotations

import time
from typing import Any

from tierguard.bench.stats import pct


class _Clock:
    """Adds up the time spent in tierguard's own code on the call path: the resources' routing
    (``named``) and the tap's steps on the wire (begin, answered, whole or streaming/feed/ended,
    and the answer's checks: escalation)."""

    def __init__(self) -> None:
        self.spent = 0.0
        self._depth = 0
        self._undo: list[tuple[Any, str, Any]] = []

    def _wrap(self, owner: Any, name: str) -> None:
        real = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            if self._depth:  # inside another clocked function: counted there
                return real(*args, **kwargs)
            self._depth += 1
            t0 = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                self.spent += time.perf_counter() - t0
                self._depth -= 1

        self._undo.append((owner, name, real))
        setattr(owner, name, timed)

    def __enter__(self) -> _Clock:
        from tierguard.app import resources, tap

        self._wrap(resources, "named")
        for name in ("answered", "streaming", "whole", "feed", "ended", "escalation", "replay"):
            self._wrap(tap.Call, name)
        self._wrap(tap.Tap, "begin")
        return self

    def __exit__(self, *exc: Any) -> None:
        for owner, name, real in reversed(self._undo):
            setattr(owner, name, real)

    def lap(self) -> float:
        spent, self.spent = self.spent, 0.0
        return spent


def hotpath_figures(calls: int = 5000, sample_rate: float = 0.05) -> dict[str, Any]:
    """The wrapper against the bare SDK call on a local zero-latency Messages API, interleaved."""
    import tempfile

    import anthropic

    from tierguard.app.client import ShadowedAnthropic
    from tierguard.config import get_settings
    from tierguard.policy import parse_policy
    from tierguard.sim.models import Scenario
    from tierguard.sim.server import SimServer
    from tierguard.sim.servers import RedisServer, free_port
    from tierguard.store.db import make_engine, upgrade

    sim = SimServer(Scenario.from_dict(CHECKS_SCENARIO)).start_background()
    redis = RedisServer().start()
    folder = tempfile.mkdtemp(prefix="tierguard-bench-")
    db_url = f"sqlite:///{folder}/bench.db"
    upgrade(make_engine(db_url))
    policy = parse_policy({"defaults": {"sample_rate": sample_rate}, "categories": {"bench": {}}})
    request = {"category": "bench", "max_tokens": 16, "system": "bench: classify",
               "messages": [{"role": "user", "content": "The parcel arrived damaged."}]}
    bare_request = {k: v for k, v in request.items() if k != "category"} | {"model": "claude-haiku-4-5"}

    def measure(redis_url: str, n: int) -> tuple[list[float], list[float], list[float], dict]:
        sdk = anthropic.Anthropic(base_url=sim.base_url, api_key="sk-bench", max_retries=0)
        wrapped = ShadowedAnthropic(sdk, settings=get_settings(redis_url=redis_url, database_url=db_url),
                                    policy=policy)
        bare_t, wrapped_t, added = [], [], []
        for _ in range(200):  # warm-up: connections, caches, the route table
            sdk.messages.create(**bare_request)
            wrapped.messages.create(**request)
        with _Clock() as clock:
            for i in range(n):
                for first in ((True, False) if i % 2 else (False, True)):
                    t0 = time.perf_counter()
                    if first:
                        sdk.messages.create(**bare_request)
                        bare_t.append(time.perf_counter() - t0)
                    else:
                        clock.lap()
                        wrapped.messages.create(**request)
                        wrapped_t.append(time.perf_counter() - t0)
                        added.append(clock.lap())
        wrapped.tierguard_flush(10)
        stats = wrapped.tierguard_stats()
        wrapped.tierguard_close()
        return bare_t, wrapped_t, added, stats

    try:
        bare_t, wrapped_t, added, stats = measure(redis.url, calls)
        _, _, added_down, stats_down = measure(f"redis://127.0.0.1:{free_port()}/0", calls)
        checks = checks_figures(sim.base_url, get_settings(redis_url=redis.url, database_url=db_url),
                                calls, sample_rate)
    finally:
        redis.stop()
        sim.stop()
    us = 1e6
    return {
        "calls_each": calls, "sample_rate": sample_rate,
        "median_ratio": round(pct(wrapped_t, 50) / pct(bare_t, 50), 4),
        "bare_median_us": round(pct(bare_t, 50) * us, 1),
        "wrapped_median_us": round(pct(wrapped_t, 50) * us, 1),
        "p50_added_us": round(pct(added, 50) * us, 1),
        "p99_added_us": round(pct(added, 99) * us, 1),
        "max_added_us": round(max(added) * us, 1),
        "redis_down_p50_added_us": round(pct(added_down, 50) * us, 1),
        "redis_down_p99_added_us": round(pct(added_down, 99) * us, 1),
        "published": stats.get("published", 0),
        "redis_down_dropped": stats_down.get("dropped_broker_down", 0),
        "checks": checks,
        "goals": {"median_ratio": 1.02, "p99_added_us": 200, "redis_down_p99_added_us": 1000,
                  "checks_p50_added_us": 50},
    }


SCHEMA = {"type": "object", "required": ["vendor", "invoice_number", "total", "currency"],
          "properties": {"vendor": {"type": "string", "minLength": 1},
                         "invoice_number": {"type": "string", "pattern": "^INV-[0-9]+$"},
                         "total": {"type": "number", "minimum": 0},
                         "currency": {"enum": ["EUR", "USD", "GBP", "JPY"]},
                         "notes": {"type": "string"}}}
CHECKS_SCENARIO = {"categories": {name: {"kind": "json", "pad": 2048, "agreement": 1.0}
                                  for name in ("invoices-plain", "invoices-checked")}}


def checks_figures(base_url: str, settings: Any, calls: int, sample_rate: float) -> dict[str, Any]:
    """A 2 KB JSON answer, categorized, with the answer checks off and on (``escalate_on`` with a
    JSON Schema), interleaved per call: what checking adds."""
    import anthropic

    from tierguard.app.client import ShadowedAnthropic
    from tierguard.policy import parse_policy

    json_cmp = {"type": "json"}
    policy = parse_policy({"defaults": {"sample_rate": sample_rate}, "categories": {
        "invoices-plain": {"comparator": json_cmp},
        "invoices-checked": {"comparator": {**json_cmp, "schema": SCHEMA},
                             "escalate_on": ["invalid", "empty", "refusal", "truncated"]}}})
    wrapped = ShadowedAnthropic(anthropic.Anthropic(base_url=base_url, api_key="sk-bench", max_retries=0),
                                settings=settings, policy=policy)

    def call(name: str) -> None:
        wrapped.messages.create(category=name, max_tokens=1024, system=f"{name}: extract the invoice",
                                messages=[{"role": "user", "content": "Invoice from Acme, 120 EUR."}])

    timings: dict[str, tuple[list[float], list[float]]] = {"off": ([], []), "on": ([], [])}
    for _ in range(200):
        call("invoices-plain")
        call("invoices-checked")
    with _Clock() as clock:
        for i in range(calls):
            for setup in (("off", "on") if i % 2 else ("on", "off")):
                clock.lap()
                t0 = time.perf_counter()
                call("invoices-checked" if setup == "on" else "invoices-plain")
                timings[setup][0].append(time.perf_counter() - t0)
                timings[setup][1].append(clock.lap())
    wrapped.tierguard_flush(10)
    stats = wrapped.tierguard_stats()
    wrapped.tierguard_close()
    us = 1e6
    (off_t, off_added), (on_t, on_added) = timings["off"], timings["on"]
    return {"answer_bytes": 2048, "escalated": stats.get("escalated", 0),
            "off_p50_added_us": round(pct(off_added, 50) * us, 1),
            "on_p50_added_us": round(pct(on_added, 50) * us, 1),
            "p50_added_us": round((pct(on_added, 50) - pct(off_added, 50)) * us, 1),
            "p99_added_us": round((pct(on_added, 99) - pct(off_added, 99)) * us, 1),
            "median_call_off_us": round(pct(off_t, 50) * us, 1),
            "median_call_on_us": round(pct(on_t, 50) * us, 1)}
