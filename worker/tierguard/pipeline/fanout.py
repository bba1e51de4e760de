"""Running a batch of shadow jobs concurrently on one event loop per worker process.

Hundreds of threads each blocking on one model call cost more CPU in switching
than in work; one asyncio loop holding every call of a batch in flight does not.
The loop lives in its own thread with ``AsyncAnthropic`` clients of small
connection pools; Celery's task threads hand it batches and wait.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anthropic
import httpx2

from tierguard import metrics
from tierguard.contract.job import ShadowJob
from tierguard.errors import PermanentCallError, RetryableCallError
from tierguard.pipeline.calls import Answer, call_model_async
from tierguard.pipeline.judging import JudgeCall, needs_judge
from tierguard.pipeline.results import Result
from tierguard.pipeline.shadow import (
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


POOL_SHARD = 8  # connections per client: httpcore scans its whole pool on every request


class LoopRunner:
    """An event loop in a daemon thread, with async SDK clients made lazily.

    Requests rotate over ``shards`` clients of ``POOL_SHARD`` connections each:
    one pool of hundreds of connections costs milliseconds of CPU per request.
    The loop's thread starts on first use, and again (with new clients) in a forked child.
    """

    def __init__(self, client_factory: Callable[[], anthropic.AsyncAnthropic], shards: int = 1):
        self._factory = client_factory
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
                    self._loop = asyncio.new_event_loop()
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


def async_client(timeout: float, max_connections: int = POOL_SHARD,
                 api_key: str | None = None) -> anthropic.AsyncAnthropic:
    """A shadow client; ``api_key`` None: the SDK's own ``ANTHROPIC_API_KEY``."""
    limits = httpx2.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    return anthropic.AsyncAnthropic(api_key=api_key, max_retries=0, timeout=timeout,
                                    http_client=anthropic.DefaultAsyncHttpxClient(limits=limits))


async def run_batch(runner: LoopRunner, policy: Policy, jobs: list[ShadowJob], *, attempt: int,
                    final: bool, held: frozenset[str] = frozenset(),
                    limited: dict[str, float] | None = None) -> tuple[list[Result], list[Retry]]:
    """Call every job's shadow model at once; compare; sort into results and retries. The probes
    of jobs in ``held`` are left out; a probe's 429 lands in ``limited`` (rung -> retry-after)."""

    judge = JudgeCall(lambda: runner.client)

    async def one(job: ShadowJob) -> list[Result | Retry]:
        skip = skipped(policy, job, attempt)
        if skip is not None:
            return [skip]
        try:
            answer = await call_model_async(runner.client, job.shadow_model, job.request, job.headers)
            metrics.SHADOW_CALL.labels(job.shadow_model).observe(answer.latency_ms / 1000)
        except RetryableCallError as err:
            return [result_of(policy, job, None, err, attempt) if final else Retry(job, err)]
        except PermanentCallError as err:
            return [result_of(policy, job, None, err, attempt)]
        judged = needs_judge(policy.category(job.category))
        if judged:  # no noise-floor twin: one judge is enough
            result = await judge.result(policy, job, answer, attempt)
        else:
            result = result_of(policy, job, answer, None, attempt)
        probe = await probed(job, answer, judged) if result.verdict is not None else []
        if judged or result.verdict is None or not noise_sampled(policy, job):
            return [result] + probe
        try:
            second = await call_model_async(runner.client, policy.category(job.category).reference,
                                            job.request, job.headers)
        except (RetryableCallError, PermanentCallError):
            return [result] + probe  # a noise sample is best effort, never retried
        twin = noise_result(policy, job, answer.text, second)
        return [result] + probe + ([twin] if twin else [])

    async def probed(job: ShadowJob, answer: Answer, judged: bool) -> list[Result]:
        """A ladder's probe of a rung not in service (best effort, never retried)."""
        rung = probe_rung(policy, job)
        if rung is None or job.job_id in held:  # a probe never waits: left out while its rung must
            return []
        twin = probe_job(policy, job, rung, answer.text)
        try:
            second = await call_model_async(runner.client, rung, job.request, job.headers)
        except RetryableCallError as err:
            if err.kind == "rate_limited" and limited is not None:  # the worker pauses the rung
                limited[rung] = max(limited.get(rung, 0.0), err.retry_after or 0.0)
            return []
        except PermanentCallError:
            return []
        if judged:
            return [await judge.result(policy, twin, second, attempt, kind="probe")]
        return [dataclasses.replace(result_of(policy, twin, second, None, attempt), kind="probe")]

    async def alone(job: ShadowJob) -> list[Result | Retry]:
        """``one``, whose failure is this job's recorded error, never the batch's."""
        try:
            return await one(job)
        except Exception as err:
            log.exception("job %s failed; recorded as job_failed", job.job_id)
            failed = PermanentCallError(f"{type(err).__name__}: {err}"[:500], kind="job_failed")
            return [result_of(policy, job, None, failed, attempt)]

    done = [item for items in await asyncio.gather(*(alone(job) for job in jobs)) for item in items]
    return ([d for d in done if isinstance(d, Result)], [d for d in done if isinstance(d, Retry)])
