"""Comparators: decide whether two model answers agree.

A comparator is any object with ``compare(primary, shadow) -> Verdict``.
Built-ins are named in :data:`COMPARATORS`; :func:`resolve` turns a policy
spec (``"exact"``, ``{"type": "label", "labels": [...]}`` or a dotted path
``"pkg.module:Class"``) into an instance. Answers that cannot be read (no
label, no JSON, no number) are disagreements whose ``reason`` says why.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class Verdict:
    agree: bool
    score: float
    reason: str
    detail: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Comparator(Protocol):
    def compare(self, primary: str, shadow: str) -> Verdict: ...


def _disagree(reason: str, **detail: Any) -> Verdict:
    return Verdict(False, 0.0, reason, detail)


# --- exact -----------------------------------------------------------------

_WS = re.compile(r"\s+")
_TRAILING = ".!?;:,"


def normalise(text: str) -> str:
    return _WS.sub(" ", text).strip().casefold().rstrip(_TRAILING).strip()


@dataclass(frozen=True)
class Exact:
    """Equal after collapsing whitespace, case-folding and dropping trailing punctuation."""

    def compare(self, primary: str, shadow: str) -> Verdict:
        if normalise(primary) == normalise(shadow):
            return Verdict(True, 1.0, "identical after normalisation")
        return _disagree("answers differ")


# --- label -----------------------------------------------------------------

@dataclass(frozen=True)
class Label:
    """Each answer must contain exactly one of ``labels`` (whole word, any case)."""

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
            return _disagree(f"unparseable: {side} answer has {why}", primary=a, shadow=b)
        if a == b:
            return Verdict(True, 1.0, f"same label {a.upper()}", {"label": a})
        return _disagree(f"label {a.upper()} vs {b.upper()}", primary=a, shadow=b)


# --- json ------------------------------------------------------------------

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
                return _disagree(f"unparseable: {side} answer has no JSON")
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


# --- numeric ---------------------------------------------------------------

_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+")


def extract_number(text: str) -> float:
    m = _NUMBER.search(text)
    if m is None:
        raise ValueError("no number")
    return float(m.group(0).replace(",", ""))


@dataclass(frozen=True)
class Numeric:
    """The first number in each answer, equal within ``rel_tol`` or ``abs_tol``."""

    rel_tol: float = 0.0
    abs_tol: float = 0.0

    def __post_init__(self) -> None:
        if self.rel_tol < 0 or self.abs_tol < 0:
            raise ValueError("rel_tol/abs_tol: must be >= 0")

    def compare(self, primary: str, shadow: str) -> Verdict:
        try:
            a = extract_number(primary)
        except ValueError:
            return _disagree("unparseable: primary answer has no number")
        try:
            b = extract_number(shadow)
        except ValueError:
            return _disagree("unparseable: shadow answer has no number")
        if math.isclose(a, b, rel_tol=self.rel_tol, abs_tol=self.abs_tol):
            return Verdict(True, 1.0, f"{a:g} ≈ {b:g}", {"primary": a, "shadow": b})
        scale = max(abs(a), abs(b))
        score = max(0.0, 1 - abs(a - b) / scale) if scale else 0.0
        return Verdict(False, score, f"{a:g} vs {b:g}", {"primary": a, "shadow": b})


# --- similarity ------------------------------------------------------------

_TOKEN = re.compile(r"\w+", re.U)


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
        fn = token_f1 if self.method == "f1" else rouge_l
        score = fn(_tokens(primary), _tokens(shadow))
        agree = score >= self.threshold
        return Verdict(agree, score, f"{self.method} {score:.2f} {'≥' if agree else '<'} {self.threshold}")


# --- registry --------------------------------------------------------------

COMPARATORS: dict[str, type] = {
    "exact": Exact,
    "label": Label,
    "json": Json,
    "numeric": Numeric,
    "similarity": Similarity,
}


def _import(path: str) -> type:
    module, _, attr = path.partition(":") if ":" in path else path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"cannot import comparator {path!r} ({err})") from None


def resolve(spec: str | dict[str, Any]) -> Comparator:
    """Instantiate the comparator a policy names; ``ValueError`` says what is wrong."""
    if isinstance(spec, str):
        name, options = spec, {}
    elif isinstance(spec, dict):
        options = dict(spec)
        name = options.pop("type", None)
        if not isinstance(name, str):
            raise ValueError("type: required (one of " + ", ".join(COMPARATORS) + " or a dotted path)")
    else:
        raise ValueError("must be a name or a mapping with a 'type'")
    cls = COMPARATORS.get(name)
    if cls is None:
        if "." not in name and ":" not in name:
            raise ValueError(f"type: unknown comparator {name!r} (one of {', '.join(COMPARATORS)})")
        cls = _import(name)
    if dataclasses.is_dataclass(cls):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown option for {name} comparator")
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in options
                   and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ValueError(f"{missing[0]}: required for {name} comparator")
        for key in ("labels", "ignore_keys"):
            if key in options and isinstance(options[key], list):
                options[key] = tuple(options[key])
    try:
        instance = cls(**options)
    except TypeError as err:
        raise ValueError(f"bad options for {name} comparator ({err})") from None
    if not isinstance(instance, Comparator):
        raise ValueError(f"{name} has no compare(primary, shadow) method")
    return instance
