"""Comparators by name: the built-ins, a dotted path to your own, and :func:`resolve`."""

from __future__ import annotations

import dataclasses
import importlib
import re
from typing import Any

from tierguard.compare.base import Comparator
from tierguard.compare.json_fields import Json
from tierguard.compare.judge import Judge
from tierguard.compare.label import Exact, Label
from tierguard.compare.numeric import Numeric
from tierguard.compare.similarity import Similarity

COMPARATORS: dict[str, type] = {
    "exact": Exact,
    "label": Label,
    "json": Json,
    "numeric": Numeric,
    "similarity": Similarity,
    "judge": Judge,
}


def _import(path: str) -> type:
    module, _, attr = path.partition(":") if ":" in path else path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"cannot import comparator {path!r} ({err})") from None


def compile_pattern(pattern: Any) -> re.Pattern[str] | None:
    """A comparator spec's ``pattern`` compiled (None: none); ``ValueError`` naming it when bad."""
    if pattern is None:
        return None
    if not isinstance(pattern, str) or not pattern:
        raise ValueError("pattern: must be a non-empty regular expression")
    try:
        return re.compile(pattern)
    except re.error as err:
        raise ValueError(f"pattern: not a valid regular expression ({err})") from None


def pattern_of(spec: str | dict[str, Any]) -> re.Pattern[str] | None:
    """The ``pattern`` a comparator spec sets (any comparator may: it is no comparator's option)."""
    return compile_pattern(spec.get("pattern")) if isinstance(spec, dict) else None


def resolve(spec: str | dict[str, Any]) -> Comparator:
    """Instantiate the comparator a policy names; ``ValueError`` says what is wrong.

    ``pattern`` (a regex, :func:`pattern_of`) is accepted with every comparator and checked here,
    not passed on: it is the category's answer format (:mod:`~tierguard.compare.checks`)."""
    if isinstance(spec, str):
        name, options = spec, {}
    elif isinstance(spec, dict):
        options = dict(spec)
        compile_pattern(options.pop("pattern", None))
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
