"""``tierguard evaluate``: the playbook's onboarding — held-out cases through both models, then a decision.

Every case (a Messages API body without ``model``) goes to the category's
candidate and reference with the worker's retries, is compared by the category's
comparator (the judge included) and recorded as a ``sample`` of kind
``evaluation`` (never fed to the live engine). The match rate's Wilson 95 %
interval decides: ``candidate`` when its lower bound clears ``promote_threshold``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Callable
from typing import Any

import anthropic
from sqlalchemy.engine import Engine

from tierguard.engine.detector import wilson
from tierguard.errors import TierguardError
from tierguard.job import ShadowJob
from tierguard.ops.jsonl import records
from tierguard.pipeline.calls import Answer, call_model_with_retries
from tierguard.pipeline.judging import JudgeCall, needs_judge
from tierguard.pipeline.recorder import Result, record_many
from tierguard.pipeline.shadow import result_of
from tierguard.policy import CategoryPolicy, Policy

DAYS_PER_MONTH = 30


class EvaluationError(TierguardError):
    """A cases file or an option cannot be used; the message says where."""


def read_cases(lines: list[str]) -> list[dict[str, Any]]:
    cases = []
    for i, case in records(lines, EvaluationError):
        if not isinstance(case, dict) or not isinstance(case.get("messages"), list):
            raise EvaluationError(f"line {i}: needs a Messages API body with 'messages'")
        case.pop("model", None)
        case.pop("stream", None)
        case.setdefault("max_tokens", 1024)
        cases.append(case)
    if not cases:
        raise EvaluationError("no cases in the file")
    return cases


def cost_per_call(policy: Policy, model: str, answers: list[Answer]) -> float | None:
    """Average USD per call of ``model`` over the evaluation's measured usage."""
    costs = [policy.cost_usd(model, a.input_tokens, a.output_tokens) for a in answers]
    known = [c for c in costs if c is not None]
    return sum(known) / len(known) if known else None


def projected_savings(policy: Policy, cat: CategoryPolicy, candidate: list[Answer],
                      reference: list[Answer], calls_per_day: float) -> float | None:
    """Monthly USD saved by serving ``calls_per_day`` from the candidate instead of the reference."""
    c, r = cost_per_call(policy, cat.candidate, candidate), cost_per_call(policy, cat.reference, reference)
    if c is None or r is None:
        return None
    return round((r - c) * calls_per_day * DAYS_PER_MONTH, 2)


async def _evaluate(policy: Policy, cat: CategoryPolicy, cases: list[dict[str, Any]], run: str,
                    concurrency: int, attempts: int, client: anthropic.AsyncAnthropic,
                    progress: Callable[[int], None] | None) -> list[tuple[Result, Answer | None]]:
    gate = asyncio.Semaphore(concurrency)
    judge = JudgeCall(lambda: client, attempts=attempts) if needs_judge(cat) else None
    done = 0

    async def one(i: int, case: dict[str, Any]) -> tuple[Result, Answer | None]:
        nonlocal done
        async with gate:
            job = ShadowJob(job_id=f"evaluate-{run}-{i}", category=cat.name, served_model=cat.reference,
                            shadow_model=cat.candidate, request=case, primary_text="",
                            requested_at=dt.datetime.now(dt.UTC).isoformat())
            ref, cand = await asyncio.gather(
                call_model_with_retries(client, cat.reference, case, attempts),
                call_model_with_retries(client, cat.candidate, case, attempts), return_exceptions=True)
            if isinstance(ref, BaseException):  # no reference answer: nothing to compare against
                job = ShadowJob(**{**job.to_dict(), "primary_text": ""})
                result = result_of(policy, job, None, ref, attempts)
                done += 1
                if progress:
                    progress(done)
                return result, None
            job = ShadowJob(**{**job.to_dict(), "primary_text": ref.text,
                               "primary_input_tokens": ref.input_tokens,
                               "primary_output_tokens": ref.output_tokens,
                               "primary_latency_ms": ref.latency_ms})
            if isinstance(cand, BaseException):
                result = result_of(policy, job, None, cand, attempts)
            elif judge is not None:
                result = await judge.result(policy, job, cand, attempts)
            else:
                result = result_of(policy, job, cand, None, attempts)
            done += 1
            if progress:
                progress(done)
            return result, ref

    return await asyncio.gather(*(one(i, c) for i, c in enumerate(cases)))


def evaluate(engine: Engine, policy: Policy, category: str, cases: list[dict[str, Any]], *,
             concurrency: int = 8, attempts: int = 6, calls_per_day: float | None = None,
             recorded_calls_per_day: float | None = None,
             client: anthropic.AsyncAnthropic | None = None,
             progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    cat = policy.category(category)
    run = uuid.uuid4().hex[:8]

    async def go() -> list[tuple[Result, Answer | None]]:
        sdk = client or anthropic.AsyncAnthropic(max_retries=0)
        try:
            return await _evaluate(policy, cat, cases, run, concurrency, attempts, sdk, progress)
        finally:
            if client is None:
                await sdk.close()

    pairs = asyncio.run(go())
    results = [r for r, _ in pairs]
    record_many(engine, None, policy, [Result(r.job, r.answer, r.verdict, r.error, r.attempt,
                                              kind="evaluation", judge=r.judge) for r in results])
    compared = [r for r in results if r.verdict is not None]
    agree = sum(r.verdict.agree for r in compared)  # type: ignore[union-attr]
    low, high = wilson(agree, len(compared)) if compared else (0.0, 1.0)
    recommendation = "candidate" if compared and low >= cat.promote_threshold else "reference"
    per_day = calls_per_day if calls_per_day is not None else recorded_calls_per_day
    savings = None
    if per_day is not None:
        savings = projected_savings(policy, cat, [r.answer for r in compared if r.answer],
                                    [ref for _, ref in pairs if ref is not None], per_day)
    return {"category": category, "cases": len(cases), "compared": len(compared),
            "errors": len(results) - len(compared),
            "agreement": round(agree / len(compared), 4) if compared else None,
            "wilson_low": round(low, 4), "wilson_high": round(high, 4),
            "recommendation": recommendation, "candidate": cat.candidate, "reference": cat.reference,
            "promote_threshold": cat.promote_threshold, "calls_per_day": per_day,
            "projected_monthly_savings_usd": savings, "run": run}
