"""The numeric comparator: the first number in each answer, within a tolerance."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import ClassVar

from tierguard.compare.base import Verdict, disagree

_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+")


def extract_number(text: str) -> float:
    m = _NUMBER.search(text)
    if m is None:
        raise ValueError("no number")
    return float(m.group(0).replace(",", ""))


@dataclass(frozen=True)
class Numeric:
    """The first number in each answer, equal within ``rel_tol`` or ``abs_tol``."""

    inline: ClassVar[bool] = True  # cheap and linear in the text: the worker compares on its loop

    rel_tol: float = 0.0
    abs_tol: float = 0.0

    def __post_init__(self) -> None:
        if self.rel_tol < 0 or self.abs_tol < 0:
            raise ValueError("rel_tol/abs_tol: must be >= 0")

    def compare(self, primary: str, shadow: str) -> Verdict:
        try:
            a = extract_number(primary)
        except ValueError:
            return disagree("unparseable: primary answer has no number")
        try:
            b = extract_number(shadow)
        except ValueError:
            return disagree("unparseable: shadow answer has no number")
        if math.isclose(a, b, rel_tol=self.rel_tol, abs_tol=self.abs_tol):
            return Verdict(True, 1.0, f"{a:g} ≈ {b:g}", {"primary": a, "shadow": b})
        scale = max(abs(a), abs(b))
        score = max(0.0, 1 - abs(a - b) / scale) if scale else 0.0
        return Verdict(False, score, f"{a:g} vs {b:g}", {"primary": a, "shadow": b})
