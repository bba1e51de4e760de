"""Running a batch of shadow jobs concurrently on one event loop per worker process.

Hundreds of threads each blocking on one model call cost more CPU in switching
than in work; one asyncio loop holding every call of a batch in flight does not.
The loop lives in its own thread with ``AsyncAnthropic`` clients of small
connection pools; Celery's task threads hand it batches and wait.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import os
import ssl
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import anthropic
import httpx2

from tierguard import metrics
from tierguard.contract.job import ShadowJob
from tierguard.errors import PermanentCallError, RetryableCallError
from tierguard.pipeline.calls import Answer, call_model_async
from tierguard.pipeline.judging import JudgeCall, needs_judge
from tierguard.pipeline.platform_client import platform_client
from tierguard.pipeline.results import Result
from tierguard.pipeline.shadow import (
    challenge_jobs,
    noise_result,
    noise_sampled,
    probe_job,
    probe_rung,
    result_of,
    skipped,
)
from tierguard.policy import Policy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Retry:
    """A job whose call failed transiently; it is re-queued on its own with a delay."""

    job: ShadowJob
    error: RetryableCallError


QUEUE_WAITS = 5  # a comparison waits at most this many budgets for a free comparison thread
COMPARE_THREADS = 4  # comparisons run here, off the loop: a slow one cannot stall the calls
POOL_SHARD = 8  # connections per client: httpcore scans its whole pool on every request
INLINE_MAX = 16_384  # characters of each answer an ``inline`` comparator compares on the loop


class LoopRunner:
    """An event loop in a daemon thread, with async SDK clients made lazily.

    Requests rotate over ``shards`` clients of ``POOL_SHARD`` connections each:
    one pool of hundreds of connections costs milliseconds of CPU per request.
    The loop's thread starts on first use, and again (with new clients) in a forked child;
    ``loop`` is ``uvloop`` or ``asyncio`` (``TIERGUARD_WORKER_LOOP``, see :func:`new_loop`).
    """

    def __init__(self, client_factory: Callable[[], anthropic.AsyncAnthropic], shards: int = 1,
                 compare_timeout: float = 2.0, loop: str = "asyncio"):
        self._factory = client_factory
        self._new_loop = new_loop(loop)
        self.compare_timeout = compare_timeout
        self._compare_pool: ThreadPoolExecutor | None = None
        self._clients: list[anthropic.AsyncAnthropic] = []
        self._shards = max(1, shards)
        self._next = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid: int | None = None
        self._start_lock = threading.Lock()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """This process's loop, running in its own thread."""
        if self._pid != os.getpid():
            with self._start_lock:
                if self._pid != os.getpid():
                    self._clients, self._next = [], 0  # a parent's connections are the parent's
                    self._compare_pool = ThreadPoolExecutor(COMPARE_THREADS,
                                                            thread_name_prefix="tierguard-compare")
                    self._loop = self._new_loop()
                    threading.Thread(target=self._loop.run_forever, name="tierguard-fanout",
                                     daemon=True).start()
                    self._pid = os.getpid()
        assert self._loop is not None
        return self._loop

    @property
    def client(self) -> anthropic.AsyncAnthropic:
        """The next client in rotation (only ever touched from the loop's thread)."""
        if len(self._clients) < self._shards:
            self._clients.append(self._factory())
        self._next = (self._next + 1) % len(self._clients)
        return self._clients[self._next]

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    async def off_loop(self, fn: Callable[..., Result | None], *args: Any) -> Result | None:
        """``fn(*args)`` on a comparison thread, never on the loop; None past the time budget,
        counted from when it starts (the thread finishes on its own; the loop goes on)."""
        loop = asyncio.get_running_loop()
        started = asyncio.Event()

        def run() -> Result | None:
            loop.call_soon_threadsafe(started.set)
            return fn(*args)

        future = loop.run_in_executor(self._compare_pool, run)
        try:  # waiting behind other comparisons is not this one's time, but is bounded too
            await asyncio.wait_for(started.wait(), QUEUE_WAITS * self.compare_timeout)
            return await asyncio.wait_for(future, self.compare_timeout)
        except TimeoutError:
            return None


def async_client(timeout: float, max_connections: int = POOL_SHARD, api_key: str | None = None,
                 platform: str = "anthropic", policy: Callable[[], Policy] | None = None) -> Any:
    """A shadow client; ``api_key`` None: the SDK's own ``ANTHROPIC_API_KEY``. On ``bedrock`` or
    ``vertex`` the platform's client, with ids from ``policy()`` (:mod:`.platform_client`)."""
    limits = httpx2.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    http = anthropic.DefaultAsyncHttpxClient(limits=limits, verify=_tls())
    if platform != "anthropic" and policy is not None:
        return platform_client(platform, policy, max_retries=0, timeout=timeout, http_client=http)
    return ShadowClient(api_key=api_key, max_retries=0, timeout=timeout, http_client=http)


URLS_KEPT = 64  # merged URLs a ShadowClient keeps


class ShadowClient(anthropic.AsyncAnthropic):
    """``AsyncAnthropic`` whose request URLs are merged with its base URL once per path, not on
    every call (two URL parses, about 1 % of a shadow call's CPU); everything else is the SDK's."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._urls: dict[str, httpx2.URL] = {}

    def _prepare_url(self, url: str) -> httpx2.URL:
        merged = self._urls.get(url)
        if merged is None:
            merged = super()._prepare_url(url)
            if len(self._urls) < URLS_KEPT:  # paths with ids (batches) must not grow it for ever
                self._urls[url] = merged
        return merged


def new_loop(kind: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """How a runner makes its loop: ``uvloop``'s (where it is installed) or ``asyncio``'s."""
    if kind == "uvloop":
        try:
            import uvloop
        except ImportError:  # not on every platform (Windows): asyncio's serves
            log.info("uvloop is not installed: shadow calls run on asyncio's event loop")
        else:
            return uvloop.new_event_loop
    return asyncio.new_event_loop


@functools.cache
def _tls() -> ssl.SSLContext:
    """One TLS context for every client of the process (as httpx2 makes its default one): loading
    the CA bundle for each of a worker's 128 clients cost 25 ms of CPU apiece."""
    return httpx2.create_ssl_context()


def inline(policy: Policy, job: ShadowJob, answer: Answer) -> bool:
    """Whether the job's comparison runs on the loop: an ``inline`` comparator (cheap, linear in
    the texts) on answers of at most :data:`INLINE_MAX` characters; the hop to a comparison
    thread and back costs more than such a comparison."""
    return (getattr(policy.category(job.category).compare, "inline", False) is True
            and len(answer.text) <= INLINE_MAX and len(job.primary_text) <= INLINE_MAX)


async def run_jobs(runner: LoopRunner, policy: Policy, jobs: list[ShadowJob], *, attempt: int,
                   final: bool, held: frozenset[str] = frozenset(),
                   limited: dict[str, float] | None = None,
                   challenged: dict[str, list[str]] | None = None) -> tuple[list[Result], list[Retry]]:
    """Call every job's shadow model at once; compare; sort into results and retries. The probes
    of jobs in ``held`` are left out; a job in ``challenged`` also asks those challengers; a
    probe's or challenger's 429 lands in ``limited`` (model -> retry-after)."""
    run = _Run(runner, policy, attempt, final, held, limited if limited is not None else {},
               challenged or {})
    done = [item for items in await asyncio.gather(*(run.alone(job) for job in jobs)) for item in items]
    return ([d for d in done if isinstance(d, Result)], [d for d in done if isinstance(d, Retry)])


@dataclass
class _Run:
    """One message's jobs on the loop: what every job's calls share."""

    runner: LoopRunner
    policy: Policy
    attempt: int
    final: bool
    held: frozenset[str]
    limited: dict[str, float]
    challenged: dict[str, list[str]]

    def __post_init__(self) -> None:
        self.judge = JudgeCall(lambda: self.runner.client)

    async def alone(self, job: ShadowJob) -> list[Result | Retry]:
        """:meth:`one`, whose failure is this job's recorded error, never the message's."""
        try:
            return await self.one(job)
        except Exception as err:
            log.exception("job %s failed; recorded as job_failed", job.job_id)
            failed = PermanentCallError(f"{type(err).__name__}: {err}"[:500], kind="job_failed")
            return [result_of(self.policy, job, None, failed, self.attempt)]

    async def one(self, job: ShadowJob) -> list[Result | Retry]:
        """The job's shadow call, compared or judged, with its probe and noise twin."""
        policy, attempt = self.policy, self.attempt
        skip = skipped(policy, job, attempt)
        if skip is not None:
            return [skip]
        try:
            answer = await call_model_async(self.runner.client, job.shadow_model, job.request, job.headers)
            metrics.SHADOW_CALL.labels(job.shadow_model).observe(answer.latency_ms / 1000)
        except RetryableCallError as err:
            return [result_of(policy, job, None, err, attempt) if self.final else Retry(job, err)]
        except PermanentCallError as err:
            return [result_of(policy, job, None, err, attempt)]
        judged = needs_judge(policy.category(job.category))
        if judged:  # no noise-floor twin: one judge is enough
            result = await self.judge.result(policy, job, answer, attempt)
        else:
            result = await self.compared(job, answer)
        extra = []
        if result.verdict is not None:
            extra = await self.probed(job, answer, judged) + await self.challenges(job, answer, judged)
        if judged or result.verdict is None or not noise_sampled(policy, job):
            return [result] + extra
        return [result] + extra + await self.noise(job, answer)

    async def noise(self, job: ShadowJob, answer: Answer) -> list[Result]:
        """The reference asked again for the noise floor (best effort, never retried)."""
        try:
            second = await call_model_async(self.runner.client, self.policy.category(job.category).reference,
                                            job.request, job.headers)
        except (RetryableCallError, PermanentCallError):
            return []
        twin = await self.runner.off_loop(noise_result, self.policy, job, answer.text, second,
                                          answer.snapshot)
        return [twin] if twin else []

    async def probed(self, job: ShadowJob, answer: Answer, judged: bool) -> list[Result]:
        """A ladder's probe of a rung not in service (best effort, never retried)."""
        rung = probe_rung(self.policy, job)
        if rung is None or job.job_id in self.held:  # a probe never waits: left out while its rung must
            return []
        twin = probe_job(self.policy, job, rung, answer.text, answer.snapshot)
        second = await self.extra(job, rung)
        if second is None:
            return []
        if judged:
            return [await self.judge.result(self.policy, twin, second, self.attempt, kind="probe")]
        return [dataclasses.replace(await self.compared(twin, second), kind="probe")]

    async def extra(self, job: ShadowJob, model: str) -> Answer | None:
        """A probe's or challenger's call of ``model`` (None when it failed; a 429 pauses it)."""
        try:
            return await call_model_async(self.runner.client, model, job.request, job.headers)
        except RetryableCallError as err:
            if err.kind == "rate_limited":  # the worker pauses the model
                self.limited[model] = max(self.limited.get(model, 0.0), err.retry_after or 0.0)
        except PermanentCallError:
            pass
        return None

    async def challenges(self, job: ShadowJob, answer: Answer, judged: bool) -> list[Result]:
        """The challengers the job asks, at once (best effort, never retried)."""
        models = self.challenged.get(job.job_id) or []
        done = await asyncio.gather(*(self.challenge(job, answer, m, judged) for m in models))
        return [r for results in done for r in results]

    async def challenge(self, job: ShadowJob, answer: Answer, model: str, judged: bool) -> list[Result]:
        """One challenger's answer against the reference's and (not judged) the served one."""
        vs_reference, vs_serving = challenge_jobs(self.policy, job, model, answer.text, answer.snapshot)
        second = await self.extra(job, model)
        if second is None:
            return []
        if judged:  # one judge call: against the reference only
            return [await self.judge.result(self.policy, vs_reference, second, self.attempt,
                                            kind="challenger")]
        out = [dataclasses.replace(await self.compared(vs_reference, second), kind="challenger")]
        if vs_serving is not None:  # the same answer, compared again: its call is priced once
            unpriced = dataclasses.replace(second, input_tokens=None, output_tokens=None,
                                           cache_write_tokens=0, cache_read_tokens=0)
            out.append(dataclasses.replace(await self.compared(vs_serving, unpriced), kind="challenger"))
        return out

    async def compared(self, job: ShadowJob, answer: Answer) -> Result:
        """The answer compared (off the loop unless :func:`inline`), within the time budget (else
        ``comparator_timeout``)."""
        if inline(self.policy, job, answer):
            return result_of(self.policy, job, answer, None, self.attempt)
        result = await self.runner.off_loop(result_of, self.policy, job, answer, None, self.attempt)
        if result is not None:
            return result
        log.warning("job %s: the comparison took over %.1fs; recorded as comparator_timeout", job.job_id,
                    self.runner.compare_timeout)
        return Result(job, answer, None, ("comparator_timeout", f"the comparison took over "
                                          f"{self.runner.compare_timeout:g}s (TIERGUARD_COMPARE_TIMEOUT)"),
                      self.attempt)
