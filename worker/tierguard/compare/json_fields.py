"""The JSON comparator: the JSON value in each answer, compared field by field."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import fastjsonschema

from tierguard.compare.base import Verdict, disagree

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S | re.I)


def _remote_ref(schema: Any) -> str | None:
    """The first ``$ref`` in ``schema`` that is not local (``#…``), or None."""
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if ref is not None and not (isinstance(ref, str) and ref.startswith("#")):
            return str(ref)
        items: Any = schema.values()
    elif isinstance(schema, list):
        items = schema
    else:
        return None
    return next((found for v in items if (found := _remote_ref(v)) is not None), None)


def compile_schema(schema: Any) -> Callable[[Any], Any]:
    """A validator for the JSON Schema ``schema``, compiled once (fastjsonschema: a few µs per
    answer). Only local references (``#/…``): compiling never reads a file or the network.
    ``ValueError`` naming ``schema`` when it is not a valid schema."""
    if not isinstance(schema, dict):
        raise ValueError("schema: must be a mapping (a JSON Schema)")
    if (ref := _remote_ref(schema)) is not None:
        raise ValueError(f"schema: $ref {ref!r} is not local; only '#/…' references (nothing is fetched)")
    try:
        return fastjsonschema.compile(schema, handlers={}, use_default=False)
    except Exception as err:  # noqa: BLE001 - a malformed schema raises anything from its own to TypeError
        raise ValueError(f"schema: not a valid JSON Schema ({err})") from None


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
    the answers agree when ``score >= min_score``. ``schema`` (a JSON Schema, optional) is not
    used to compare: it is the category's format for the ``invalid`` answer check
    (:mod:`~tierguard.compare.checks`).
    """

    ignore_keys: tuple[str, ...] = ()
    rel_tol: float = 0.0
    abs_tol: float = 0.0
    unordered_lists: bool = False
    case_sensitive: bool = True
    min_score: float = 1.0
    schema: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "ignore_keys", tuple(self.ignore_keys or ()))
        validate = None if self.schema is None else compile_schema(self.schema)
        object.__setattr__(self, "_validate", validate)
        if not 0.0 <= self.min_score <= 1.0:
            raise ValueError("min_score: must be between 0 and 1")
        if self.rel_tol < 0 or self.abs_tol < 0:
            raise ValueError("rel_tol/abs_tol: must be >= 0")

    def schema_problem(self, value: Any) -> str | None:
        """Why ``value`` (a parsed answer) fails ``schema``, or None (also when there is none)."""
        validate = self._validate  # type: ignore[attr-defined]
        if validate is None:
            return None
        try:
            validate(value)
        except fastjsonschema.JsonSchemaValueException as err:
            return err.message
        return None

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
