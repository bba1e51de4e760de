"""The JSON comparator: the JSON value in each answer, compared field by field."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from tierguard.compare.base import Verdict, disagree

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S | re.I)


def extract_json(text: str) -> Any:
    """The JSON value in ``text``: the whole text, a fenced block, or the first {...}/[...]."""
    text = text.strip()
    candidates = [text] + [m.group(1) for m in _FENCE.finditer(text)]
    decoder = json.JSONDecoder()
    for c in candidates:
        try:
            return json.loads(c)
        except ValueError:
            pass
    for i, ch in enumerate(text):
        if ch in "{[":
            try:
                return decoder.raw_decode(text, i)[0]
            except ValueError:
                continue
    raise ValueError("no JSON value found")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass(frozen=True)
class Json:
    """Field-level comparison of the JSON in each answer.

    ``score`` is the share of leaf fields (union of both sides) that match;
    the answers agree when ``score >= min_score``.
    """

    ignore_keys: tuple[str, ...] = ()
    rel_tol: float = 0.0
    abs_tol: float = 0.0
    unordered_lists: bool = False
    case_sensitive: bool = True
    min_score: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "ignore_keys", tuple(self.ignore_keys or ()))
        if not 0.0 <= self.min_score <= 1.0:
            raise ValueError("min_score: must be between 0 and 1")
        if self.rel_tol < 0 or self.abs_tol < 0:
            raise ValueError("rel_tol/abs_tol: must be >= 0")

    def _leaves(self, value: Any, path: str, out: dict[str, Any]) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                p = f"{path}.{k}" if path else str(k)
                if k in self.ignore_keys or p in self.ignore_keys:
                    continue
                self._leaves(v, p, out)
        elif isinstance(value, list):
            items = value
            if self.unordered_lists:
                items = sorted(value, key=lambda x: json.dumps(x, sort_keys=True))
            for i, v in enumerate(items):
                self._leaves(v, f"{path}[{i}]", out)
            if not value:
                out[path] = []
        else:
            out[path] = value

    def _equal(self, a: Any, b: Any) -> bool:
        if _is_number(a) and _is_number(b):
            return math.isclose(a, b, rel_tol=self.rel_tol, abs_tol=self.abs_tol)
        if isinstance(a, str) and isinstance(b, str):
            a, b = a.strip(), b.strip()
            return a == b if self.case_sensitive else a.casefold() == b.casefold()
        return a == b

    def compare(self, primary: str, shadow: str) -> Verdict:
        parsed = []
        for side, text in (("primary", primary), ("shadow", shadow)):
            try:
                parsed.append(extract_json(text))
            except ValueError:
                return disagree(f"unparseable: {side} answer has no JSON")
        a, b = {}, {}
        self._leaves(parsed[0], "", a)
        self._leaves(parsed[1], "", b)
        keys = sorted(set(a) | set(b))
        if not keys:
            return Verdict(True, 1.0, "both empty")
        differing = [k for k in keys if k not in a or k not in b or not self._equal(a[k], b[k])]
        score = 1 - len(differing) / len(keys)
        if score >= self.min_score:
            return Verdict(True, score, f"{len(keys) - len(differing)}/{len(keys)} fields match")
        shown = ", ".join(differing[:5]) + (" …" if len(differing) > 5 else "")
        return Verdict(False, score, f"fields differ: {shown}", {"differing": differing[:50]})
