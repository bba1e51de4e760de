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
    """Compares two answers to one request.

    A comparator that calls a model for each comparison (the judge) says so with a class
    attribute ``needs_model = True`` and may name the model in ``model`` (None: the category's
    reference); :func:`model_called` reads both. Such a comparator's ``compare`` is not called
    by the worker, which calls the model instead. One whose ``compare`` is cheap and linear in
    the texts (the built-in ``exact``, ``label`` and ``numeric``) says so with ``inline = True``:
    the worker runs it on its event loop for short answers, not on a comparison thread.
    """

    def compare(self, primary: str, shadow: str) -> Verdict: ...


def model_called(comparator: object, reference: str) -> str | None:
    """The model ``comparator`` calls for each comparison, or None when it calls none."""
    if not getattr(comparator, "needs_model", False):
        return None
    model = getattr(comparator, "model", None)
    return model if isinstance(model, str) and model else reference


def disagree(reason: str, **detail: Any) -> Verdict:
    return Verdict(False, 0.0, reason, detail)


_WS = re.compile(r"\s+")
_TRAILING = ".!?;:,"


def normalise(text: str) -> str:
    """Collapse whitespace, case-fold, drop trailing punctuation."""
    return _WS.sub(" ", text).strip().casefold().rstrip(_TRAILING).strip()
