"""Hands shadow jobs to Celery from a background thread, so callers never wait on Redis.

``submit`` is a non-blocking put into a bounded queue; a full queue drops the job and counts
it. The publishing thread builds the jobs (hashing, JSON) and sends up to
``TIERGUARD_PUBLISH_JOBS_PER_MESSAGE`` of them, gathered for at most ``TIERGUARD_PUBLISH_GATHER_S``,
as one ``shadow_batch`` message; when Redis is unreachable it drops, counts, and tries the broker
again after a short pause instead of queueing without bound.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections import Counter
from typing import Any

from tierguard import metrics
from tierguard.app.snapshot import Sampled, build_job
from tierguard.config import Settings
from tierguard.contract import job_store, keys
from tierguard.contract.broker import BATCH_TASK, job_reprs, make_celery
from tierguard.contract.job import ShadowJob
from tierguard.contract.messages import body_usage
from tierguard.contract.sealing import Sealer, seal_job, sealer
from tierguard.errors import ConfigError
from tierguard.headroom import pauses, ratelimits
from tierguard.store import traffic

log = logging.getLogger(__name__)

THREAD = "tierguard-publisher"  # its thread's name (bench hotpath reads its CPU time by it)
TRAFFIC_FLUSH_SECONDS = 5.0
VIEWS_EVERY = 0.25  # s between two sends of production's rate-limit views (the latest headers win)
MAX_UNSENT = 100_000  # (category, model, metric) sums held while Redis is down
MAX_SEEN = 1_000_000  # production calls and usages waiting for the publisher's thread
ANSWER_HELD_MAX = 16 * 1024  # bytes of an answer whose usage is read on the publisher's thread, and
# of a call (its request and its answer) held whole for that thread to settle
HELD_WHILE = 2_000  # answers and calls are held only while fewer entries wait (else read on the
# caller's): at most 2,000 × 16 KiB = 32 MiB of bodies waiting for the publisher's thread
_UNSET = object()

class Publisher:
    def __init__(self, settings: Settings, broker_pause: float = 1.0):
        self.settings = settings
        self.jobs_per_message = settings.publish_jobs_per_message
        self.gather_wait = settings.publish_gather_s
        self.broker_pause = broker_pause
        self._last_warning = 0.0
        self._sealing: Any = _UNSET
        self._bad_keys = False
        self._fresh()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """The publishing thread (started on first use, not at construction: see Core)."""
        self._thread = threading.Thread(target=self._run, name=THREAD, daemon=True)
        self.held = self._seen  # (before the thread starts: one that ends at once leaves it None)
        self._thread.start()

    def _fresh(self) -> None:
        """Empty queues, counters, locks and no connections: a new publisher's or a forked child's."""
        self.queue: queue.Queue[tuple[float, Sampled]] = queue.Queue(maxsize=self.settings.publish_buffer)
        self.counts: Counter[str] = Counter()
        self._down_until = 0.0
        self._app = None
        # Production calls and their tokens: the caller's thread only appends (atomic, no lock,
        # no increment lost to a swap); the publisher's thread adds them up and writes Redis.
        self._seen: collections.deque[tuple] = collections.deque(maxlen=MAX_SEEN)
        # While the publishing thread runs, the callers' threads may hold a 200 answer read whole
        # here, (settler, *arguments), for this thread to settle — settler.settle(*arguments):
        # reading, counting and releasing it there — while fewer than HELD_WHILE entries wait and
        # its request and answer come to at most ANSWER_HELD_MAX bytes (else they settle it).
        self.held: collections.deque[tuple] | None = None
        self._flush_lock = threading.Lock()
        self._tallied: Counter[tuple[str, str, str]] = Counter()  # drained, not yet written
        self._pauses: collections.deque[tuple[str, float | None]] = collections.deque(maxlen=1000)
        self._views: dict[str, Any] = {}  # model -> the latest production response's headers
        self._views_due = 0.0
        self._unsent: Counter[tuple[str, str, str]] = Counter()  # kept while Redis is down
        self._traffic_flushed = time.monotonic()
        self._redis = None
        self._stop = threading.Event()
        self._hurry = threading.Event()  # set while anyone flushes, and once closing: no gathering
        self._flushing, self._closing, self._hurry_lock = 0, False, threading.Lock()

    def restart_after_fork(self) -> None:
        """In a forked child: start empty (what the parent held is the parent's to publish and
        count), with connections and a publishing thread of its own."""
        if self._stop.is_set():
            return  # closed before the fork
        self._fresh()
        self.start()

    def submit(self, sampled: Sampled) -> None:
        """Queue one sampled call; never blocks, never raises."""
        try:
            self.queue.put_nowait((time.monotonic(), sampled))
            self.counts["submitted"] += 1
        except queue.Full:
            self.counts["dropped_buffer_full"] += 1
            metrics.DROPPED.labels("buffer_full").inc()
            self._warn("shadow buffer full; dropping samples")

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_warning > 60:
            self._last_warning = now
            log.warning("tierguard: %s (counts so far: %s)", message, dict(self.counts))

    def _send(self, jobs: list[ShadowJob]) -> None:
        if self._app is None:
            self._app = make_celery(self.settings)
        self._app.send_task(BATCH_TASK, args=[[j.fields() for j in jobs]], task_id=jobs[0].job_id,
                            queue=self.settings.queue, retry=False, **job_reprs(len(jobs)))

    def _sealer(self) -> Sealer | None:
        if self._sealing is _UNSET:
            try:
                self._sealing = sealer(self.settings)
            except ConfigError as err:  # never the caller's problem: shadows stop, loudly
                log.error("tierguard: %s; shadow jobs are dropped until it is fixed", err)
                self._sealing = None
                self._bad_keys = True
        if self._bad_keys:
            raise ValueError("TIERGUARD_PAYLOAD_KEYS is invalid")
        return self._sealing  # type: ignore[return-value]

    def count(self, category: str, model: str, metric: str = "calls") -> None:
        """Count one production call (or a guarded one) of ``category`` served by ``model``."""
        self._seen.append((category, model, metric))

    def add_usage(self, category: str, model: str, usage: Any, escalated: bool = False) -> None:
        """Add a production answer's tokens (its ``usage``: SDK object or JSON) to ``category``
        (``escalated``: an escalated call's, also counted apart)."""
        if usage is not None:
            self._seen.append((category, model, (usage,) if escalated else usage))

    def add_call(self, category: str, model: str, body: bytes, headers: Any = None) -> None:
        """Count one production call and its answer's tokens (its JSON ``body``, read whole) in one
        entry, as :meth:`count` and :meth:`add_answer` would (``headers``: its answer's, as for
        :meth:`saw_headers`)."""
        if headers is not None:
            self._views[model] = headers
        seen = self._seen
        if len(body) <= ANSWER_HELD_MAX and len(seen) < HELD_WHILE:
            seen.append((category, model, body, "calls"))
        else:
            seen.append((category, model, "calls"))
            self.add_usage(category, model, body_usage(body))

    def add_answer(self, category: str, model: str, body: bytes, escalated: bool = False) -> None:
        """Add the tokens of a production answer read whole (its JSON ``body``): its usage read on
        the publisher's thread (a small answer, while few entries wait for it; else now)."""
        seen = self._seen
        if not escalated and len(body) <= ANSWER_HELD_MAX and len(seen) < HELD_WHILE:
            seen.append((category, model, body))
        else:
            self.add_usage(category, model, body_usage(body), escalated)

    def rate_limited(self, model: str, retry_after: float | None) -> None:
        """Production got a 429 on ``model``: pause its shadows (written by the publisher's thread)."""
        self._pauses.append((model, retry_after))

    def _client(self) -> Any:
        """This process's Redis for counters, pauses and headroom (not the broker's connection)."""
        if self._redis is None:
            import redis

            self._redis = redis.Redis.from_url(self.settings.redis_url, socket_timeout=1,
                                               socket_connect_timeout=1)
        return self._redis

    def saw_headers(self, model: str, headers: Any) -> None:
        """Production's latest rate-limit headers for ``model`` (parsed on the publisher's thread)."""
        self._views[model] = headers

    def _send_views(self) -> None:
        views, self._views = self._views, {}
        parsed = {}
        for model, headers in views.items():
            try:
                parsed[model] = ratelimits.parse(headers)
            except Exception:
                self.counts["headroom_reports_dropped"] += 1
        try:
            ratelimits.record_all(self._client(), parsed)  # every model's view in one round trip
        except Exception:
            self.counts["headroom_reports_dropped"] += len(parsed)

    def _send_pauses(self) -> None:
        while self._pauses:
            model, retry_after = self._pauses.popleft()
            try:
                pauses.pause(self._client(), model, retry_after)
                self.counts["shadow_pauses_sent"] += 1
            except Exception:
                self.counts["shadow_pauses_dropped"] += 1

    def _drain(self) -> Counter[tuple[str, str, str]]:
        """What was seen since the last drain (the callers' threads only append): the entries there
        now and, when held calls were settled among them, once more those there then (what settling
        added; not drained for ever while the callers' threads go on appending)."""
        counts: Counter[tuple[str, str, str]] = Counter()
        if self._take(counts, len(self._seen)):
            self._take(counts, len(self._seen))
        return counts

    def _take(self, counts: Counter[tuple[str, str, str]], n: int) -> int:
        """Up to ``n`` entries added to ``counts``, held calls settled: how many were."""
        seen, settled = self._seen, 0
        for _ in range(n):
            try:
                entry = seen.popleft()
            except IndexError:
                break
            if type(entry[0]) is not str:  # a held call (see held)
                entry[0].settle(*entry[1:])
                settled += 1
                continue
            category, model, what = entry[0], entry[1], entry[2]
            if len(entry) > 3:  # a call with its answer's body (add_call)
                counts[(category, model, "calls")] += 1
            if isinstance(what, str):
                counts[(category, model, what)] += 1
                continue
            if isinstance(what, bytes):  # an answer's body: its usage read here
                what = body_usage(what)
                if what is None:
                    continue
            escalated = isinstance(what, tuple)
            for metric, value in traffic.tokens_of(what[0] if escalated else what).items():
                if value:
                    counts[(category, model, metric)] += value
                    if escalated:
                        counts[(category, model, f"escalated_{metric}")] += value
        return settled

    def _flush_traffic(self) -> None:
        with self._flush_lock:  # the publisher's thread and close() may both flush
            self._flush_locked()

    def _tally(self, wait: float = -1) -> None:
        """Add up what the callers' threads left since the last time (answers' usage read here, held
        calls settled): on every turn of the publisher's loop, so that answer bodies are not held
        for long. ``wait``: the longest wait for a flush in progress (-1: as long as it takes)."""
        if not self._flush_lock.acquire(timeout=wait):
            return
        try:
            self._tallied.update(self._drain())
        finally:
            self._flush_lock.release()

    def _flush_locked(self) -> None:
        self._traffic_flushed = time.monotonic()
        fresh, self._tallied = self._tallied, Counter()
        fresh.update(self._drain())
        for (category, model, metric), n in fresh.items():  # Prometheus: each call once
            if metric in ("calls", "guarded"):
                (metrics.GUARDED if metric == "guarded" else metrics.CALLS).labels(category, model).inc(n)
        counts, self._unsent = self._unsent + fresh, Counter()
        if not counts:
            return
        key = keys.TRAFFIC.format(minute=int(time.time() // 60))
        try:
            pipe = self._client().pipeline(transaction=True)  # all or nothing: a retry never doubles
            for (category, model, metric), n in counts.items():
                pipe.hincrby(key, traffic.field(category, model, metric), n)
            pipe.expire(key, traffic.KEEP_SECONDS)
            pipe.execute()
        except Exception:
            # Kept for the next flush (a later minute): counted late rather than lost.
            self.counts["traffic_reports_delayed"] += 1
            if len(counts) <= MAX_UNSENT:
                self._unsent.update(counts)
            else:
                self.counts["traffic_reports_dropped"] += 1

    def _run(self) -> None:
        try:
            self._loop()
        finally:  # (stopped, or ended by what it could not catch): callers settle their own calls
            self.held = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self._pauses:
                self._send_pauses()
            if self._views and time.monotonic() >= self._views_due:
                self._views_due = time.monotonic() + VIEWS_EVERY
                self._send_views()
            try:
                if self._seen:
                    self._tally()
                if time.monotonic() - self._traffic_flushed > TRAFFIC_FLUSH_SECONDS:
                    self._flush_traffic()
            except Exception:  # never the end of the thread that publishes shadow jobs
                self.counts["traffic_reports_dropped"] += 1
                log.exception("tierguard: counting production traffic failed")
            try:
                items = [self.queue.get(timeout=0.2)]
            except queue.Empty:
                continue
            if self.queue.qsize() < self.jobs_per_message - 1:  # (woken once, not by each job)
                self._hurry.wait(max(0.0, items[0][0] + self.gather_wait - time.monotonic()))
            while len(items) < self.jobs_per_message:
                try:
                    items.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            if self._pauses:  # before these jobs: a worker must see the pause first
                self._send_pauses()
            try:
                self._publish(items)
            finally:
                for _ in items:
                    self.queue.task_done()

    def _publish(self, items: list[tuple[float, Sampled]]) -> None:
        for category, n in Counter(sampled.category for _, sampled in items).items():
            metrics.SAMPLED.labels(category).inc(n)
        if time.monotonic() < self._down_until:
            self.counts["dropped_broker_down"] += len(items)
            metrics.DROPPED.labels("broker_down").inc(len(items))
            return
        try:
            seal = self._sealer()
        except ValueError:  # TIERGUARD_PAYLOAD_KEYS is invalid: logged once when first read
            self.counts["dropped_bad_payload_keys"] += len(items)
            metrics.DROPPED.labels("bad_payload_keys").inc(len(items))
            return
        jobs = []
        for _, sampled in items:
            try:
                jobs.append(seal_job(build_job(sampled), seal))
            except Exception:
                self.counts["dropped_unserializable"] += 1
                metrics.DROPPED.labels("unserializable").inc()
                log.exception("tierguard: could not build a shadow job")
        if not jobs:
            return
        sized = job_store.stash(self._client(), jobs, self.settings.job_inline_max,
                                self.settings.job_payload_ttl_s)
        budget = max(self.settings.job_inline_max, job_store.MESSAGE_BUDGET)
        published = self.counts["published"]
        for part in job_store.chunks(sized, budget):  # no message carries megabytes of jobs
            self._send_part(part)
        if self.counts["published"] > published:
            now = time.monotonic()
            for submitted, _ in items:
                metrics.PUBLISH.observe(now - submitted)

    def _send_part(self, jobs: list[ShadowJob]) -> None:
        if time.monotonic() < self._down_until:
            self.counts["dropped_broker_down"] += len(jobs)
            metrics.DROPPED.labels("broker_down").inc(len(jobs))
            return
        try:
            self._send(jobs)
            self.counts["published"] += len(jobs)
        except Exception as err:  # kombu/redis errors vary by failure mode
            self.counts["dropped_broker_down"] += len(jobs)
            metrics.DROPPED.labels("broker_down").inc(len(jobs))
            self._down_until = time.monotonic() + self.broker_pause
            self._warn(f"cannot publish to the broker ({type(err).__name__}: {err})")

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every submitted job is published or dropped (the calls held for the publishing
        thread settled first, here: a sampled one is then submitted)."""
        deadline = time.monotonic() + timeout
        try:
            self._tally(wait=timeout)
        except Exception:
            log.exception("tierguard: counting production traffic failed")
        with self._hurry_lock:
            self._flushing += 1
            self._hurry.set()
        try:
            while self.queue.unfinished_tasks and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            with self._hurry_lock:
                self._flushing -= 1
                if not self._flushing and not self._closing:
                    self._hurry.clear()
        return not self.queue.unfinished_tasks

    def live(self) -> bool:
        """Its thread runs in this process (not in the parent of a fork) and it is not closed."""
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    def close(self, timeout: float = 2.0) -> None:
        self._closing, self.held = True, None  # (no gathering from now on, whoever else flushes)
        self.flush(timeout)
        self._stop.set()
        self._flush_traffic()
