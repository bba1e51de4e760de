"""Exact and label comparators: the whole answer, or the one allowed label it contains."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

from tierguard.compare.base import Verdict, disagree, normalise


@dataclass(frozen=True)
class Exact:
    """Equal after collapsing whitespace, case-folding and dropping trailing punctuation."""

    inline: ClassVar[bool] = True  # cheap and linear in the text: the worker compares on its loop

    def compare(self, primary: str, shadow: str) -> Verdict:
        if normalise(primary) == normalise(shadow):
            return Verdict(True, 1.0, "identical after normalisation")
        return disagree("answers differ")



@dataclass(frozen=True)
class Label:
    """Each answer must contain exactly one of ``labels`` (whole word, any case)."""

    inline: ClassVar[bool] = True

    labels: tuple[str, ...]

    def __post_init__(self) -> None:
        labels = tuple(str(x) for x in (self.labels or ()))
        if not labels:
            raise ValueError("labels: at least one label is required")
        object.__setattr__(self, "labels", labels)
        alternatives = "|".join(re.escape(x) for x in sorted(labels, key=len, reverse=True))
        object.__setattr__(self, "_pattern", re.compile(rf"(?<!\w)({alternatives})(?!\w)", re.I))

    def find(self, text: str) -> tuple[str | None, str]:
        found = {m.group(1).casefold() for m in self._pattern.finditer(text)}  # type: ignore[attr-defined]
        if not found:
            return None, "no allowed label"
        if len(found) > 1:
            return None, f"several labels ({', '.join(sorted(found))})"
        return found.pop(), ""

    def compare(self, primary: str, shadow: str) -> Verdict:
        a, why_a = self.find(primary)
        b, why_b = self.find(shadow)
        if a is None or b is None:
            side, why = ("primary", why_a) if a is None else ("shadow", why_b)
            return disagree(f"unparseable: {side} answer has {why}", primary=a, shadow=b)
        if a == b:
            return Verdict(True, 1.0, f"same label {a.upper()}", {"label": a})
        return disagree(f"label {a.upper()} vs {b.upper()}", primary=a, shadow=b)
