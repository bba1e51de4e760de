"""The similarity comparator: token F1 or ROUGE-L F-measure against a threshold."""

from __future__ import annotations

import re
from dataclasses import dataclass

from tierguard.compare.base import Verdict

_TOKEN = re.compile(r"\w+", re.U)
# ROUGE-L costs one step per pair of tokens: past this many (a tenth of a second of CPU), token F1.
ROUGE_MAX_CELLS = 1_000_000


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.casefold())


def token_f1(a: list[str], b: list[str]) -> float:
    if not a and not b:
        return 1.0
    common: dict[str, int] = {}
    counts: dict[str, int] = {}
    for t in a:
        counts[t] = counts.get(t, 0) + 1
    for t in b:
        if counts.get(t, 0) > 0:
            counts[t] -= 1
            common[t] = common.get(t, 0) + 1
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    p, r = overlap / len(b), overlap / len(a)
    return 2 * p * r / (p + r)


def rouge_l(a: list[str], b: list[str]) -> float:
    if not a and not b:
        return 1.0
    if not a or not b:
        return 0.0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    p, r = lcs / len(b), lcs / len(a)
    return 2 * p * r / (p + r)


@dataclass(frozen=True)
class Similarity:
    """Token-level F1 or ROUGE-L F-measure at or above ``threshold``."""

    method: str = "f1"
    threshold: float = 0.8

    def __post_init__(self) -> None:
        if self.method not in ("f1", "rougeL"):
            raise ValueError("method: must be 'f1' or 'rougeL'")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError("threshold: must be between 0 and 1")

    def compare(self, primary: str, shadow: str) -> Verdict:
        a, b = _tokens(primary), _tokens(shadow)
        method = self.method
        if method == "rougeL" and len(a) * len(b) > ROUGE_MAX_CELLS:  # quadratic: bounded work
            method = "f1"
        score = (token_f1 if method == "f1" else rouge_l)(a, b)
        agree = score >= self.threshold
        reason = f"{method} {score:.2f} {'≥' if agree else '<'} {self.threshold}"
        if method != self.method:
            return Verdict(agree, score, reason + " (too long for rougeL: token F1 instead)",
                           {"method": method, "tokens": [len(a), len(b)]})
        return Verdict(agree, score, reason)
