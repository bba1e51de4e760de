"""``tierguard judge check``: how far a team can trust the judge, measured on human-labelled pairs.

Each line is ``{"request", "reference", "candidate", "label"}`` with a label in
``equivalent`` / ``candidate_worse`` / ``candidate_better``. The judge (the
category's, or the defaults) grades every pair; the result is its agreement with
the labels, Cohen's kappa and the confusion table.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import anthropic

from tierguard.compare.judge import VERDICTS, Judge
from tierguard.errors import TierguardError
from tierguard.ops.jsonl import records
from tierguard.pipeline.judging import JudgeCall


class PairsError(TierguardError):
    """The pairs file cannot be used; the message names the line."""


def read_pairs(lines: list[str]) -> list[dict[str, Any]]:
    pairs = []
    for i, pair in records(lines, PairsError):
        if not isinstance(pair, dict):
            raise PairsError(f"line {i}: must be an object with request, reference, candidate, label")
        missing = [k for k in ("request", "reference", "candidate", "label") if k not in pair]
        if missing:
            raise PairsError(f"line {i}: {missing[0]}: required")
        if pair["label"] not in VERDICTS:
            raise PairsError(f"line {i}: label: must be one of {', '.join(VERDICTS)}")
        if not isinstance(pair["request"], dict):
            raise PairsError(f"line {i}: request: must be a Messages API body")
        pairs.append(pair)
    if not pairs:
        raise PairsError("no pairs in the file")
    return pairs


def kappa(confusion: dict[str, dict[str, int]]) -> float | None:
    """Cohen's kappa of the judge's verdicts against the labels."""
    n = sum(sum(row.values()) for row in confusion.values())
    if n == 0:
        return None
    observed = sum(confusion.get(v, {}).get(v, 0) for v in VERDICTS) / n
    expected = sum(sum(confusion.get(v, {}).values()) * sum(row.get(v, 0) for row in confusion.values())
                   for v in VERDICTS) / (n * n)
    return 1.0 if expected == 1 else (observed - expected) / (1 - expected)


def label_of(detail: dict[str, Any]) -> str:
    """The judge's verdict on a pair: ``candidate_worse`` if any reading says so, else the first."""
    readings = [r["verdict"] for r in detail.get("judge", [])]
    return "candidate_worse" if "candidate_worse" in readings else readings[0]


def check(pairs: list[dict[str, Any]], judge: Judge, model: str, *, concurrency: int = 8,
          client: anthropic.AsyncAnthropic | None = None) -> dict[str, Any]:
    async def run() -> list[tuple[str | None, str | None]]:
        sdk = client or anthropic.AsyncAnthropic(max_retries=0)
        call = JudgeCall(lambda: sdk)
        gate = asyncio.Semaphore(concurrency)

        async def one(i: int, pair: dict[str, Any]) -> tuple[str | None, str | None]:
            async with gate:
                verdict, why, _ = await call.ask(judge, model, pair["request"], str(pair["reference"]),
                                                 str(pair["candidate"]), f"pair-{i}")
            return (label_of(verdict.detail), None) if verdict else (None, why)

        try:
            return await asyncio.gather(*(one(i, p) for i, p in enumerate(pairs)))
        finally:
            if client is None:
                await sdk.close()

    answers = asyncio.run(run())
    confusion: dict[str, dict[str, int]] = {label: {} for label in VERDICTS}
    counts: Counter[tuple[str, str]] = Counter()
    for pair, (verdict, _) in zip(pairs, answers, strict=True):
        if verdict is not None:
            counts[(pair["label"], verdict)] += 1
    for (label, verdict), n in counts.items():
        confusion[label][verdict] = n
    judged = sum(counts.values())
    matches = sum(n for (label, verdict), n in counts.items() if label == verdict)
    k = kappa(confusion)
    return {"pairs": len(pairs), "judged": judged, "errors": len(pairs) - judged,
            "agreement": round(matches / judged, 4) if judged else None,
            "kappa": None if k is None else round(k, 4), "confusion": confusion,
            "first_errors": [why for _, why in answers if why][:5]}
