"""``tierguard evaluate``: the playbook's onboarding — held-out cases through every rung, then a decision.

Every case (a Messages API body without ``model``) goes to every rung of the
category's ladder (two-model policies: candidate and reference) with the
worker's retries; each cheaper rung's answer is compared with the reference's by
the category's comparator (the judge included) and recorded as a ``sample`` of
kind ``evaluation`` (never fed to the live engine). The cheapest rung whose match
rate's Wilson 95 % lower bound clears ``promote_threshold`` is recommended, else
the reference. The top-level agreement, interval and saving are the candidate's
(the cheapest rung's); ``rungs`` has every rung's.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Callable
from typing import Any

import anthropic
from sqlalchemy.engine import Engine

from tierguard.contract.job import ShadowJob
from tierguard.engine.betting import wilson
from tierguard.errors import TierguardError
from tierguard.ops.jsonl import records
from tierguard.ops.opportunities import DAYS_PER_MONTH
from tierguard.pipeline.calls import Answer, call_model_with_retries
from tierguard.pipeline.judging import JudgeCall, needs_judge
from tierguard.pipeline.recorder import record_many
from tierguard.pipeline.results import Result
from tierguard.pipeline.shadow import result_of
from tierguard.policy import CategoryPolicy, Policy


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


def _job(cat: CategoryPolicy, run: str, i: int, model: str, case: dict[str, Any]) -> ShadowJob:
    suffix = "" if model == cat.candidate else f"-{model}"
    return ShadowJob(job_id=f"evaluate-{run}-{i}{suffix}", category=cat.name,
                     served_model=cat.reference, shadow_model=model, request=case, primary_text="",
                     requested_at=dt.datetime.now(dt.UTC).isoformat())


Called = Answer | BaseException


async def _evaluate(policy: Policy, cat: CategoryPolicy, cases: list[dict[str, Any]], run: str,
                    concurrency: int, attempts: int, client: anthropic.AsyncAnthropic,
                    progress: Callable[[int], None] | None) -> list[tuple[list[Result], list[Called]]]:
    """Per case: a result per cheaper rung, and every rung's raw answer (the reference's first)."""
    gate = asyncio.Semaphore(concurrency)
    judge = JudgeCall(lambda: client, attempts=attempts) if needs_judge(cat) else None
    cheaper = cat.rungs[:-1]
    done = 0

    async def compared(i: int, case: dict[str, Any], model: str, ref: Called, got: Called) -> Result:
        job = _job(cat, run, i, model, case)
        if isinstance(ref, BaseException):  # no reference answer: nothing to compare against
            return result_of(policy, job, None, ref, attempts)
        job = ShadowJob(**{**job.to_dict(), "primary_text": ref.text,
                           "primary_input_tokens": ref.input_tokens,
                           "primary_output_tokens": ref.output_tokens,
                           "primary_latency_ms": ref.latency_ms})
        if isinstance(got, BaseException):
            return result_of(policy, job, None, got, attempts)
        if judge is not None:
            return await judge.result(policy, job, got, attempts)
        return result_of(policy, job, got, None, attempts)

    async def one(i: int, case: dict[str, Any]) -> tuple[list[Result], list[Called]]:
        nonlocal done
        async with gate:
            answers = await asyncio.gather(
                *(call_model_with_retries(client, m, case, attempts) for m in (cat.reference, *cheaper)),
                return_exceptions=True)
            results = await asyncio.gather(*(compared(i, case, m, answers[0], got)
                                             for m, got in zip(cheaper, answers[1:], strict=True)))
            done += 1
            if progress:
                progress(done)
            return list(results), list(answers)

    return await asyncio.gather(*(one(i, c) for i, c in enumerate(cases)))


def _score(results: list[Result]) -> tuple[list[Result], int, float, float]:
    """(compared results, agreeing, Wilson 95 % low, high)."""
    compared = [r for r in results if r.verdict is not None]
    agree = sum(r.verdict.agree for r in compared)  # type: ignore[union-attr]
    low, high = wilson(agree, len(compared)) if compared else (0.0, 1.0)
    return compared, agree, low, high


def _cost(policy: Policy, model: str, answers: list[Called]) -> float | None:
    """USD for ``model``'s answered calls, from their usage (None when none can be priced)."""
    costs = [policy.cost_usd(model, a.input_tokens, a.output_tokens, a.cache_write_tokens,
                             a.cache_read_tokens, a.batch) for a in answers if isinstance(a, Answer)]
    known = [c for c in costs if c is not None]
    return round(sum(known), 6) if known else None


def evaluate(engine: Engine, policy: Policy, category: str, cases: list[dict[str, Any]], *,
             concurrency: int = 8, attempts: int = 6, calls_per_day: float | None = None,
             recorded_calls_per_day: float | None = None,
             client: anthropic.AsyncAnthropic | None = None,
             progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    cat = policy.category(category)
    run = uuid.uuid4().hex[:8]

    async def go() -> list[tuple[list[Result], list[Called]]]:
        sdk = client or anthropic.AsyncAnthropic(max_retries=0)
        try:
            return await _evaluate(policy, cat, cases, run, concurrency, attempts, sdk, progress)
        finally:
            if client is None:
                await sdk.close()

    per_case = asyncio.run(go())
    results = [r for rs, _ in per_case for r in rs]
    record_many(engine, None, policy, [Result(r.job, r.answer, r.verdict, r.error, r.attempt,
                                              kind="evaluation", judge=r.judge) for r in results])
    refs = [a[0] for _, a in per_case]
    scores = {m: _score([rs[k] for rs, _ in per_case]) for k, m in enumerate(cat.rungs[:-1])}
    rungs: dict[str, dict[str, Any]] = {}
    for k, (model, (scored, agree, low, high)) in enumerate(scores.items()):
        rungs[model] = {"agreement": round(agree / len(scored), 4) if scored else None,
                        "wilson_low": round(low, 4), "wilson_high": round(high, 4),
                        "compared": len(scored),
                        "cost_usd": _cost(policy, model, [a[k + 1] for _, a in per_case])}
    rungs[cat.reference] = {"agreement": 1.0, "wilson_low": 1.0, "wilson_high": 1.0,
                            "compared": sum(isinstance(a, Answer) for a in refs),
                            "cost_usd": _cost(policy, cat.reference, refs)}
    recommended = next((m for m, (scored, _, low, _) in scores.items()
                        if scored and low >= cat.promote_threshold), cat.reference)
    compared, agree, low, high = scores[cat.candidate]
    per_day = calls_per_day if calls_per_day is not None else recorded_calls_per_day
    savings = None
    if per_day is not None:
        savings = projected_savings(policy, cat, [r.answer for r in compared if r.answer],
                                    [a for a in refs if isinstance(a, Answer)], per_day)
    role = {cat.candidate: "candidate", cat.reference: "reference"}.get(recommended, "rung")
    return {"category": category, "cases": len(cases), "compared": len(compared),
            "errors": len(per_case) - len(compared),
            "agreement": round(agree / len(compared), 4) if compared else None,
            "wilson_low": round(low, 4), "wilson_high": round(high, 4),
            "recommendation": role, "recommended_model": recommended,
            "candidate": cat.candidate, "reference": cat.reference,
            "promote_threshold": cat.promote_threshold, "calls_per_day": per_day,
            "projected_monthly_savings_usd": savings, "rungs": rungs, "run": run}
