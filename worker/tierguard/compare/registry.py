"""Comparators by name: the built-ins, a dotted path to your own, and :func:`resolve`."""

from __future__ import annotations

import dataclasses
import importlib
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
