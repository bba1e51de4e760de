"""The judge comparator: a strong model grades the candidate's answer against the reference's.

Pure: it writes the judge's request (the original request, both answers in an
order chosen from the job id, the criteria, the forced ``tierguard_verdict``
tool) and reads the judge's answer into a :class:`Verdict`. The model call is
the worker's (:mod:`tierguard.pipeline.judging`), so nothing here does I/O.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, ClassVar

from tierguard.compare.base import Verdict

VERDICT_TOOL = "tierguard_verdict"
VERDICTS = ("equivalent", "candidate_worse", "candidate_better")
DEFAULT_CRITERIA = ("The candidate's answer is acceptable when it is as correct, complete and useful "
                    "for the request as the reference's; wording, length and style do not matter.")
TOOL = {
    "name": VERDICT_TOOL,
    "description": "Record whether the candidate's answer is as good as the reference's.",
    "input_schema": {
        "type": "object",
        "properties": {
            "verdict": {"type": "string", "enum": list(VERDICTS)},
            "reason": {"type": "string", "description": "one or two sentences: why"},
        },
        "required": ["verdict", "reason"],
    },
}
SYSTEM = ("You grade answers to a request. Two answers follow: one from the REFERENCE model and one "
          "from the CANDIDATE model, in no particular order. Judge the candidate against the "
          "reference by the criteria and call the tool tierguard_verdict once.")


class JudgeAnswerError(ValueError):
    """The judge did not call ``tierguard_verdict`` with a valid verdict."""


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(b.get("text", "") if isinstance(b, dict) else str(b) for b in content)
    return json.dumps(content, default=str)


def transcript(request: dict[str, Any]) -> str:
    """The request the two models answered, as text: its system prompt and messages."""
    parts = []
    if request.get("system"):
        parts.append(f"[system]\n{_text(request['system'])}")
    for m in request.get("messages") or []:
        if isinstance(m, dict):
            parts.append(f"[{m.get('role', 'user')}]\n{_text(m.get('content', ''))}")
    return "\n\n".join(parts)


@dataclass(frozen=True)
class Judge:
    """``{type: judge, model, criteria, swap}``: ``model`` defaults to the category's reference."""

    model: str | None = None
    criteria: str = DEFAULT_CRITERIA
    swap: bool = False
    max_tokens: int = 400

    needs_model: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not isinstance(self.criteria, str) or not self.criteria.strip():
            raise ValueError("criteria: must be a non-empty text")
        if not isinstance(self.max_tokens, int) or not 16 <= self.max_tokens <= 4096:
            raise ValueError("max_tokens: must be between 16 and 4096")

    def compare(self, primary: str, shadow: str) -> Verdict:
        raise JudgeAnswerError("the judge comparator calls a model; replay judge categories with "
                               "pre-judged lines ({\"agree\": …})")

    @staticmethod
    def reference_first(job_id: str) -> bool:
        """The order of the answers for this job: the same on every redelivery."""
        return hashlib.sha256(f"judge-order:{job_id}".encode()).digest()[0] % 2 == 0

    def orders(self, job_id: str) -> list[bool]:
        first = self.reference_first(job_id)
        return [first, not first] if self.swap else [first]

    def request(self, model: str, request: dict[str, Any], reference: str, candidate: str,
                reference_first: bool) -> dict[str, Any]:
        """The Messages API body that asks ``model`` for a verdict."""
        answers = [("reference_answer", reference), ("candidate_answer", candidate)]
        if not reference_first:
            answers.reverse()
        shown = "\n\n".join(f"<{tag}>\n{text}\n</{tag}>" for tag, text in answers)
        prompt = (f"<request>\n{transcript(request)}\n</request>\n\n{shown}\n\n"
                  f"<criteria>\n{self.criteria}\n</criteria>")
        return {"model": model, "max_tokens": self.max_tokens, "system": SYSTEM,
                "messages": [{"role": "user", "content": prompt}], "tools": [TOOL],
                "tool_choice": {"type": "tool", "name": VERDICT_TOOL}}

    @staticmethod
    def read(content: list[dict[str, Any]]) -> tuple[str, str]:
        """(verdict, reason) from the judge's answer; :class:`JudgeAnswerError` if it has none."""
        for block in content or []:
            if block.get("type") == "tool_use" and block.get("name") == VERDICT_TOOL:
                data = block.get("input")
                verdict = data.get("verdict") if isinstance(data, dict) else None
                if verdict not in VERDICTS:
                    raise JudgeAnswerError(f"the judge's verdict {verdict!r} is not one of "
                                           + ", ".join(VERDICTS))
                reason = data.get("reason")
                return verdict, reason.strip() if isinstance(reason, str) and reason.strip() else verdict
        raise JudgeAnswerError(f"the judge did not call {VERDICT_TOOL}")

    def verdict(self, readings: list[tuple[str, str]], orders: list[bool]) -> Verdict:
        """Agree unless a reading says ``candidate_worse``; score 1, ½ (split) or 0."""
        worse = [r for r in readings if r[0] == "candidate_worse"]
        detail = {"judge": [{"order": "reference_first" if o else "candidate_first", "verdict": v,
                             "reason": why} for (v, why), o in zip(readings, orders, strict=True)]}
        if not worse:
            verdict, reason = readings[0]
            return Verdict(True, 1.0, f"judge: {verdict}: {reason}", detail)
        score = 1 - len(worse) / len(readings)
        return Verdict(False, score, f"judge: candidate_worse: {worse[0][1]}", detail)
