"""Answer checks: what a category's own format says about one answer, with no second model.

A category's ``escalate_on`` names the reasons it checks; :meth:`Checks.check` returns the first
that fails, in this order, as a :class:`Failure` (reason and detail), or None:

- ``empty``: no text (whitespace only counts as none) and no tool call;
- ``refusal``: ``stop_reason`` is ``refusal``;
- ``truncated``: ``stop_reason`` is ``max_tokens``;
- ``invalid``: the answer fails the category's format. A ``label`` comparator's answer must hold
  exactly one of its labels (:meth:`Label.find <tierguard.compare.label.Label.find>`, as it
  compares); a ``json`` one's must hold a JSON value (:func:`extract_json`: the whole text, a
  fenced block, the first ``{…}``/``[…]``) that, with the comparator's ``schema``, validates; a
  ``numeric`` one's must hold a number (:func:`extract_number`). A ``pattern`` (any comparator) is
  searched in the text (``re.search``: anchor it with ``\\A…\\Z`` to match the whole answer).
  ``exact``, ``similarity``, ``judge`` and custom comparators have no format of their own: for
  them only ``pattern`` gives ``invalid`` a meaning.

The text checked is the answer's comparable text, the one the comparators see
(:func:`~tierguard.contract.messages.message_text`): text blocks joined by newlines, each tool
call as ``{"input": …, "tool": NAME}``. Built once per category policy
(``CategoryPolicy.checks``); pure and fast (tens of µs for a 2 KB JSON answer and a small schema).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from tierguard.compare.json_fields import Json, extract_json
from tierguard.compare.label import Label
from tierguard.compare.numeric import Numeric, extract_number
from tierguard.contract.messages import message_text

REASONS = ("empty", "refusal", "truncated", "invalid")  # the order they are checked in


@dataclass(frozen=True)
class Failure:
    """Why an answer failed its category's checks: ``reason`` (one of :data:`REASONS`) and a
    sentence for people."""

    reason: str
    detail: str


def _excerpt(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[:limit] + "…")


def _label_format(comparator: Label) -> Callable[[str], str | None]:
    allowed = ", ".join(comparator.labels)

    def problem(text: str) -> str | None:
        found, why = comparator.find(text)
        return None if found is not None else f"the answer {_excerpt(text)} has {why} ({allowed})"
    return problem


def _json_format(comparator: Json) -> Callable[[str], str | None]:
    def problem(text: str) -> str | None:
        try:
            value = extract_json(text)
        except ValueError:
            return f"the answer {_excerpt(text)} holds no JSON value"
        wrong = comparator.schema_problem(value)
        return None if wrong is None else f"schema: {wrong}"
    return problem


def _numeric_problem(text: str) -> str | None:
    try:
        extract_number(text)
    except ValueError:
        return f"the answer {_excerpt(text)} holds no number"
    return None


def format_of(comparator: object) -> Callable[[str], str | None] | None:
    """The format a comparator implies (a function: the problem with a text, or None), or None
    for a comparator without one."""
    if isinstance(comparator, Label):
        return _label_format(comparator)
    if isinstance(comparator, Json):
        return _json_format(comparator)
    if isinstance(comparator, Numeric):
        return _numeric_problem
    return None


def _get(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


class Checks:
    """A category's answer checks, compiled once: ``check(answer)`` gives a :class:`Failure` or None.

    ``reasons`` is the category's ``escalate_on`` (no reasons: every answer passes);
    ``comparator`` its comparator (its format, for ``invalid``); ``pattern`` its spec's regex.
    """

    __slots__ = ("reasons", "_on", "_format", "_pattern")

    def __init__(self, reasons: Iterable[str] = (), comparator: object = None,
                 pattern: re.Pattern[str] | str | None = None) -> None:
        on = set(reasons)
        unknown = sorted(on - set(REASONS))
        if unknown:
            raise ValueError(f"escalate_on: {unknown[0]!r} is not one of {', '.join(REASONS)}")
        self.reasons = tuple(r for r in REASONS if r in on)
        self._on = on
        self._format = format_of(comparator) if "invalid" in on else None
        self._pattern = re.compile(pattern) if isinstance(pattern, str) else pattern

    def __bool__(self) -> bool:
        return bool(self.reasons)

    def __repr__(self) -> str:
        return f"Checks({list(self.reasons)})"

    def check(self, answer: Any) -> Failure | None:
        """The first check ``answer`` fails, or None. ``answer``: a Message as JSON (``content``
        blocks, ``stop_reason``) or the SDK's Message."""
        if not self.reasons:
            return None
        tool_calls = any(_get(b, "type") == "tool_use" for b in _get(answer, "content") or ())
        return self.check_text(message_text(answer), _get(answer, "stop_reason"), tool_calls)

    def check_text(self, text: str, stop_reason: str | None, tool_calls: bool = False) -> Failure | None:
        """:meth:`check` for a caller holding the comparable text (a stream's, say), the stop
        reason and whether the answer called a tool."""
        on = self._on
        if "empty" in on and not tool_calls and not text.strip():
            return Failure("empty", "the answer has no text and no tool call")
        if "refusal" in on and stop_reason == "refusal":
            return Failure("refusal", f"the model refused (stop_reason refusal): {_excerpt(text)}")
        if "truncated" in on and stop_reason == "max_tokens":
            return Failure("truncated", f"the answer was cut at max_tokens after {len(text)} characters")
        if "invalid" in on:
            problem = self.invalid(text)
            if problem is not None:
                return Failure("invalid", problem)
        return None

    def invalid(self, text: str) -> str | None:
        """Why ``text`` fails the category's format and pattern, or None."""
        if self._format is not None and (problem := self._format(text)) is not None:
            return problem
        if self._pattern is not None and self._pattern.search(text) is None:
            return f"the answer {_excerpt(text)} does not match the pattern {self._pattern.pattern}"
        return None
