"""Prometheus metrics: what on-call sees when it lives in Prometheus and Alertmanager.

The production side's counters live in the default registry of the process they
run in (an app with the wrapper, the gateway), so an app that already exposes
``/metrics`` shows them. Workers serve ``/metrics`` (and their probes, ``/livez``
and ``/readyz``) on ``TIERGUARD_METRICS_PORT``;
with ``PROMETHEUS_MULTIPROC_DIR`` set (a prefork pool) every process writes there
and the endpoint merges them. Updating a metric never raises into its caller.
"""

from __future__ import annotations

import logging
import os
import socket
import socketserver
import threading
from collections.abc import Callable
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

log = logging.getLogger(__name__)
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 45, 90)

# Production side (wrapper and gateway).
CALLS = Counter("tierguard_calls", "Production calls routed by category", ["category", "model"])
SAMPLED = Counter("tierguard_sampled", "Production calls handed to the shadow pipeline", ["category"])
DROPPED = Counter("tierguard_dropped", "Shadow jobs dropped on the production side", ["reason"])
GUARDED = Counter("tierguard_guarded", "Calls sent to the reference because the routed model "
                  "could not take them", ["category", "model"])
ESCALATIONS = Counter("tierguard_escalations", "Answers of a cheap rung that failed their category's "
                      "checks and were escalated, by the rung that answered and the check",
                      ["category", "model", "reason"])
REFUSED = Counter("tierguard_refused", "Requests the gateway or wrapper refused or cut, by kind "
                  "(header_timeout, too_many_clients, body_timeout, json_too_deep, deadline_exceeded, "
                  "stream_too_long, caller_left, …)", ["kind"])
UNCATEGORIZED = Counter("tierguard_uncategorized", "Gateway requests without a usable category",
                        ["reason"])
PUBLISH = Histogram("tierguard_publish_seconds", "From a sampled call to its job on the broker",
                    buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 5))

# Worker side.
RESULTS = Counter("tierguard_shadow_results", "Recorded shadow samples by outcome",
                  ["category", "outcome"])
ROUTE_CHANGES = Counter("tierguard_route_changes", "Route changes applied", ["category", "rule", "to"])
DEMOTED_AT = Gauge("tierguard_last_demotion_timestamp_seconds",
                   "When each category was last demoted (a counter's first increment is invisible to "
                   "increase(); this is what alert rules use)", ["category", "to"],
                   multiprocess_mode="max")
STATISTIC = Gauge("tierguard_cusum_statistic", "CUSUM statistic as a share of the flip threshold",
                  ["category"], multiprocess_mode="mostrecent")
ROUTE = Gauge("tierguard_route", "1 for the model that serves each category", ["category", "model"],
              multiprocess_mode="mostrecent")
MODELS_READ_FAILURES = Counter("tierguard_models_read_failures", "Reads of the API's model list "
                               "(GET /v1/models) that failed, by error type", ["reason"])
SHADOW_CALL = Histogram("tierguard_shadow_call_seconds", "Shadow model calls", ["model"],
                        buckets=LATENCY_BUCKETS)


SAMPLE_RATE = Gauge("tierguard_sample_rate", "The adaptive sample rate beat chose per category",
                    ["category"], multiprocess_mode="mostrecent")


HEADROOM = Gauge("tierguard_headroom", "Remaining share of a model's rate limit, as last seen",
                 ["model", "family"], multiprocess_mode="mostrecent")
DEFERRED = Counter("tierguard_shadows_deferred", "Shadow jobs deferred by a pause or short headroom",
                   ["model"])
ANSWERS_REUSED = Counter("tierguard_answers_reused",
                         "Jobs recorded from answers kept by an earlier run of their message (no new call)")
ANSWERS_NOT_KEPT = Counter("tierguard_answers_not_kept",
                           "Jobs whose answers could not be kept before recording (Redis failing)")
OTLP_EXPORTED = Counter("tierguard_otlp_exported", "Spans (comparisons, route changes) accepted by "
                        "the OTLP endpoint")
OTLP_DROPPED = Counter("tierguard_otlp_dropped", "Spans not exported, by reason (queue_full, "
                       "unreachable, rejected, invalid)", ["reason"])


def safely(fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception:  # a metric must never break the work it counts
            log.debug("metric update failed", exc_info=True)
            return None
    return wrapper


@safely
def route(category: str, model: str, models: tuple[str, ...] = ()) -> None:
    """Set ``tierguard_route``: 1 for ``model``, 0 for the category's other ``models``."""
    for other in models:
        if other != model:
            ROUTE.labels(category, other).set(0)
    ROUTE.labels(category, model).set(1)


class QueueDepth:
    """``tierguard_queue_depth`` read from the broker at scrape time."""

    def __init__(self, redis_factory: Callable[[], Any], queue: str):
        self._redis_factory, self._queue = redis_factory, queue
        self._redis: Any = None

    def collect(self) -> Any:
        family = GaugeMetricFamily("tierguard_queue_depth", "Shadow messages waiting in the broker",
                                   labels=["queue"])
        try:
            if self._redis is None:
                self._redis = self._redis_factory()
            family.add_metric([self._queue], float(self._redis.llen(self._queue)))
        except Exception as err:  # a scrape without the depth: the broker's own alerts cover Redis
            log.debug("queue depth unavailable: %s", err)
        yield family


Probe = Callable[[], tuple[bool, str]]


def serve(port: int, extra: list[Any] = (), probes: dict[str, Probe] | None = None,  # type: ignore[assignment]
          host: str = "0.0.0.0") -> bool:
    """Serve ``/metrics`` on ``host``:``port`` (merged across processes with PROMETHEUS_MULTIPROC_DIR),
    and each of ``probes`` (path → check): 200 with its reason when it holds, else 503.

    ``host`` is ``TIERGUARD_METRICS_HOST``: ``0.0.0.0`` (every IPv4 interface: a pod's probes and
    Prometheus), ``127.0.0.1`` (this host or container only), an address, or an IPv6 one (``::``)."""
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    from prometheus_client import make_wsgi_app

    registry: CollectorRegistry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    for collector in extra:
        registry.register(collector)
    metrics_app = make_wsgi_app(registry)
    checks = probes or {}

    def app(environ: dict, start_response: Callable) -> list[bytes]:
        check = checks.get(environ.get("PATH_INFO", ""))
        if check is None:
            return metrics_app(environ, start_response)
        try:
            ok, reason = check()
        except Exception as err:  # a probe that breaks says so, it does not crash the server
            ok, reason = False, f"probe failed: {type(err).__name__}"
        start_response("200 OK" if ok else "503 Service Unavailable",
                       [("Content-Type", "text/plain; charset=utf-8")])
        return [reason.encode() + b"\n"]

    class Threading(socketserver.ThreadingMixIn, WSGIServer):
        daemon_threads = True
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args: Any) -> None:  # probes every few seconds: not log lines
            pass

    try:
        server = make_server(host, port, app, server_class=Threading, handler_class=Quiet)
    except OSError as err:
        log.warning("cannot serve metrics on %s port %d (%s); running without them", host, port, err)
        return False
    threading.Thread(target=server.serve_forever, name="tierguard-metrics", daemon=True).start()
    log.info("metrics on %s:%d/metrics%s", host, port, "".join(f", {p}" for p in checks))
    return True
