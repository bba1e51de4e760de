"""The per-process OTLP/HTTP exporter: a bounded queue and one background thread.

Written here rather than with ``opentelemetry-sdk``'s ``BatchSpanProcessor``: Phoenix (like most
collectors) takes OTLP/HTTP as protobuf only, which ``opentelemetry-proto``'s message classes
encode; what the SDK would add is a tracer and a processor whose full queue and failed exports
are a log line, not a count. Here the recording thread only puts plain values on a bounded
queue (``put_nowait``: never waits); the export thread turns them into spans, gathers up to
``MAX_BATCH`` or ``MAX_WAIT`` seconds, and POSTs them gzipped. Whatever cannot go — a full
queue, an unreachable endpoint, a refusal — is dropped and counted
(``tierguard_otlp_dropped_total{reason}``) and logged once until an export succeeds again.
The thread starts on first use and again in a forked child (as ``pipeline/writer`` does);
:meth:`Exporter.flush` drains what is queued, within a time, at shutdown.
"""

from __future__ import annotations

import atexit
import contextlib
import gzip
import logging
import os
import queue
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote

from tierguard import metrics
from tierguard.config import Settings, get_settings, mask_url
from tierguard.errors import ConfigError
from tierguard.otlp import spans

log = logging.getLogger(__name__)
MAX_BATCH, MAX_WAIT = 512, 0.5
Item = tuple[str, dict[str, Any]]  # ("sample", a sample row's values) or ("route_change", fields)


class Exporter:
    def __init__(self, endpoint: str, headers: dict[str, str] | None = None, service_name: str = "tierguard",
                 queue_max: int = 8192, timeout: float = 5.0):
        self.url = traces_url(endpoint)
        self.headers = {**(headers or {}), "Content-Type": "application/x-protobuf",
                        "Content-Encoding": "gzip"}
        self.service_name, self.queue_max, self.timeout = service_name, queue_max, timeout
        self.queue: queue.Queue[Item] = queue.Queue(queue_max)
        self.counts: Counter[str] = Counter()  # exported, and dropped:REASON, in this process
        self._count_lock = threading.Lock()
        self._pid: int | None = None
        self._start_lock = threading.Lock()
        self._failing = False

    def submit(self, samples: Iterable[dict[str, Any]] = (), changes: Iterable[Any] = ()) -> None:
        """Queue recorded sample rows and route changes for export; never waits, never raises."""
        try:
            self._started()
            # Route changes first: rarer, and the ones a full queue should keep.
            items: list[Item] = [("route_change", spans.route_change_fields(c)) for c in changes]
            items += [("sample", row) for row in samples]
            for n, item in enumerate(items):
                try:
                    self.queue.put_nowait(item)
                except queue.Full:
                    self._dropped("queue_full", len(items) - n)
                    return
        except Exception:  # exporting must never break the recording it reports
            log.exception("could not queue spans for OTLP export")

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued so far was sent or dropped; False after ``timeout``."""
        if self._pid != os.getpid():
            return True
        q = self.queue
        with q.all_tasks_done:
            return q.all_tasks_done.wait_for(lambda: q.unfinished_tasks == 0, timeout)

    def _started(self) -> None:
        """This process's export thread, started once (a forked child starts its own)."""
        if self._pid == os.getpid():
            return
        with self._start_lock:
            if self._pid != os.getpid():
                self.queue = queue.Queue(self.queue_max)  # a parent's spans are the parent's to send
                self.counts = Counter()
                threading.Thread(target=self._run, name="tierguard-otlp", daemon=True).start()
                self._pid = os.getpid()
                atexit.register(self.flush, 2.0)  # what is queued goes before the process ends

    def _collect(self) -> list[Item]:
        items = [self.queue.get()]
        deadline = time.monotonic() + MAX_WAIT
        with contextlib.suppress(queue.Empty):  # a batch: MAX_BATCH spans or MAX_WAIT seconds
            while len(items) < MAX_BATCH and (left := deadline - time.monotonic()) > 0:
                items.append(self.queue.get(timeout=left))
        return items

    def _run(self) -> None:
        q = self.queue
        while True:
            items = self._collect()
            try:
                self.send(items)
            except Exception:
                log.exception("OTLP export failed unexpectedly")
                self._dropped("invalid", len(items))
            finally:
                for _ in items:
                    q.task_done()

    def send(self, items: list[Item]) -> None:
        """Encode and POST one batch; count what was exported or dropped."""
        body = gzip.compress(spans.export_request(
            [spans.sample_span(v) if kind == "sample" else spans.route_change_span(v) for kind, v in items],
            self.service_name), compresslevel=5)
        request = urllib.request.Request(self.url, data=body, headers=self.headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read()
        except urllib.error.HTTPError as err:
            retryable = err.code in (408, 429) or err.code >= 500
            self._failed("unreachable" if retryable else "rejected", len(items), f"HTTP {err.code}")
            return
        except (OSError, ValueError) as err:  # refused, reset, timed out, unresolvable
            self._failed("unreachable", len(items), type(err).__name__)
            return
        if self._failing:
            log.info("OTLP export to %s works again", mask_url(self.url))
            self._failing = False
        with self._count_lock:
            self.counts["exported"] += len(items)
        metrics.safely(metrics.OTLP_EXPORTED.inc)(len(items))

    def _failed(self, reason: str, n: int, what: str) -> None:
        if not self._failing:
            log.warning("OTLP export to %s failed (%s); dropping spans until it works again, "
                        "counted in tierguard_otlp_dropped_total{reason=%r}", mask_url(self.url), what,
                        reason)
            self._failing = True
        self._dropped(reason, n)

    def _dropped(self, reason: str, n: int) -> None:
        if reason == "queue_full" and not self.counts[f"dropped:{reason}"]:
            log.warning("OTLP export queue full (%d spans); dropping the newest, counted in "
                        "tierguard_otlp_dropped_total{reason='queue_full'}", self.queue_max)
        with self._count_lock:
            self.counts[f"dropped:{reason}"] += n
        metrics.safely(lambda: metrics.OTLP_DROPPED.labels(reason).inc(n))()


def traces_url(endpoint: str) -> str:
    """The endpoint's traces URL: as given when it ends with ``/v1/traces``, else with it appended."""
    endpoint = endpoint.strip().rstrip("/")
    if not endpoint.startswith(("http://", "https://")):
        raise ConfigError([f"otlp_endpoint: {mask_url(endpoint)!r} is not an http(s) URL"])
    return endpoint if endpoint.endswith("/v1/traces") else endpoint + "/v1/traces"


def parse_headers(text: str) -> dict[str, str]:
    """``k=v,k2=v2`` (OTEL_EXPORTER_OTLP_HEADERS' form, values percent-decoded) as a dict."""
    out = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        key, sep, val = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(["otlp_headers: each entry must be key=value (the value is not shown)"])
        out[key.strip()] = unquote(val.strip())
    return out


def from_settings(settings: Settings) -> Exporter | None:
    """The exporter ``TIERGUARD_OTLP_*`` describe; None when no endpoint is set."""
    if not settings.otlp_endpoint:
        return None
    headers = parse_headers(settings.otlp_headers.get_secret_value()) if settings.otlp_headers else {}
    return Exporter(settings.otlp_endpoint, headers, settings.otlp_service_name,
                    settings.otlp_queue_max, settings.otlp_timeout)


_current: list[Exporter | None] = []  # this process's exporter once looked up (empty: not yet)
_lock = threading.Lock()


def current() -> Exporter | None:
    """This process's exporter, built from the environment on first use (None: export is off)."""
    if not _current:
        with _lock:
            if not _current:
                _current.append(from_settings(get_settings()))
    return _current[0]


def use(exporter: Exporter | None) -> None:
    """Set this process's exporter (None: off), replacing the one from the environment."""
    with _lock:
        _current[:] = [exporter]


def reset() -> None:
    """Forget this process's exporter: the next use builds it from the environment again."""
    with _lock:
        _current.clear()


def recorded(samples: Iterable[dict[str, Any]] = (), changes: Iterable[Any] = ()) -> None:
    """Export what a committed transaction recorded, if export is on; never raises."""
    try:
        exporter = current()
    except Exception:
        log.exception("OTLP export is misconfigured; nothing is exported")
        use(None)
        return
    if exporter is not None:
        exporter.submit(samples, changes)


def flush(timeout: float = 2.0) -> bool:
    """Drain this process's exporter (at shutdown); True when there is nothing left."""
    exporter = _current[0] if _current else None
    return exporter.flush(timeout) if exporter is not None else True
