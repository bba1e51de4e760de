"""The comparator protocol and its verdict: what every comparator returns, and why."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class Verdict:
    """One comparison: agreement, a score in [0, 1], the reason in words, and details."""

    agree: bool
    score: float
    reason: str
    detail: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Comparator(Protocol):
    def compare(self, primary: str, shadow: str) -> Verdict: ...


def disagree(reason: str, **detail: Any) -> Verdict:
    return Verdict(False, 0.0, reason, detail)


_WS = re.compile(r"\s+")
_TRAILING = ".!?;:,"


def normalise(text: str) -> str:
    """Collapse whitespace, case-fold, drop trailing punctuation."""
    return _WS.sub(" ", text).strip().casefold().rstrip(_TRAILING).strip()
