"""Asking the judge: the worker's half of :class:`~tierguard.compare.judge.Judge`.

The judge runs in the worker's event loop right after the shadow call. A judge
call that still fails after its retries, or that answers without a valid
``tierguard_verdict``, makes the sample an error of kind ``judge_error``: never
a disagreement.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anthropic

from tierguard.compare.base import Verdict
from tierguard.compare.judge import Judge, JudgeAnswerError
from tierguard.contract.job import ShadowJob
from tierguard.contract.messages import usage_counts
from tierguard.errors import PermanentCallError, RetryableCallError
from tierguard.pipeline.calls import Answer, call_json_async
from tierguard.pipeline.platform_client import platform_of
from tierguard.pipeline.results import JudgeUsage, Result
from tierguard.policy import CategoryPolicy, Policy

JUDGE_ERROR = "judge_error"


def needs_judge(cat: CategoryPolicy) -> bool:
    return cat.judge_model is not None


@dataclass
class JudgeCall:
    """Judges one job: the order from its id, retries on transient errors, usage summed."""

    client: Callable[[], anthropic.AsyncAnthropic]
    attempts: int = 3
    retry_cap: float = 10.0

    async def _ask(self, body: dict[str, Any]) -> dict[str, Any]:
        for attempt in range(1, self.attempts + 1):
            try:
                return (await call_json_async(self.client(), body))[0]
            except RetryableCallError as err:
                if attempt == self.attempts:
                    raise
                wait = err.retry_after if err.retry_after is not None else 0.5 * 2 ** (attempt - 1)
                await asyncio.sleep(min(wait, self.retry_cap))
        raise AssertionError("unreachable")

    async def ask(self, judge: Judge, model: str, request: dict[str, Any], reference: str,
                  candidate: str, job_id: str) -> tuple[Verdict | None, str | None, JudgeUsage]:
        """(verdict, None, usage), or (None, why, usage) when the judge failed or answered badly."""
        orders = judge.orders(job_id)
        readings: list[tuple[str, str]] = []
        usage = JudgeUsage(model, 0, 0, platform=platform_of(self.client()))
        try:
            for reference_first in orders:
                body = await self._ask(judge.request(model, request, reference, candidate,
                                                     reference_first))
                u = usage_counts(body.get("usage"))
                usage = JudgeUsage(model, usage.input_tokens + u["input_tokens"],
                                   usage.output_tokens + u["output_tokens"],
                                   usage.cache_write_tokens + u["cache_creation_input_tokens"],
                                   usage.cache_read_tokens + u["cache_read_input_tokens"], usage.platform)
                readings.append(judge.read(body.get("content") or []))
        except (RetryableCallError, PermanentCallError, JudgeAnswerError) as err:
            return None, f"judge {model}: {err}", usage
        return judge.verdict(readings, orders), None, usage

    async def result(self, policy: Policy, job: ShadowJob, answer: Answer, attempt: int,
                     kind: str = "shadow") -> Result:
        """The judged :class:`Result` of ``job`` whose shadow call returned ``answer``."""
        cat = policy.category(job.category)
        judge: Judge = cat.compare  # type: ignore[assignment]
        if job.shadow_model == cat.reference:
            reference, candidate = answer.text, job.primary_text
        else:
            reference, candidate = job.primary_text, answer.text
        verdict, why, usage = await self.ask(judge, cat.judge_model or cat.reference, job.request,
                                             reference, candidate, job.job_id)
        error = None if verdict is not None else (JUDGE_ERROR, why or "judge failed")
        return Result(job, answer, verdict, error, attempt, kind=kind, judge=usage)
