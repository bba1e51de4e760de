"""Broken answers on purpose: what a category's ``broken: {rate, kinds}`` makes a model answer.

The four kinds are the answer checks' reasons: ``invalid`` (json: the JSON cut in half, so it
does not parse; label: a label outside the set, ``MAYBE``; text: ``N/A``), ``refusal``
(``stop_reason: refusal`` and a short refusal), ``truncated`` (``stop_reason: max_tokens``, the
answer cut in half) and ``empty`` (no content block, or one empty text block: each half the time).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

KINDS = ("invalid", "refusal", "truncated", "empty")
REFUSAL = "I can't help with that request."
OUTSIDE = ("MAYBE", "UNSURE", "UNKNOWN-LABEL")  # the first no category lists is the bad label


@dataclass(frozen=True)
class Broken:
    """A share ``rate`` of a model's answers in a category come back broken, of ``kinds``."""

    rate: float
    kinds: tuple[str, ...] = KINDS

    @classmethod
    def parse(cls, data: Any, where: str) -> Broken | None:
        """``{rate, kinds}`` (kinds default: all four) or None; ``ValueError`` naming the field."""
        if data is None:
            return None
        if not isinstance(data, dict):
            raise ValueError(f"{where}: must be a mapping {{rate, kinds}}")
        if unknown := sorted(set(data) - {"rate", "kinds"}):
            raise ValueError(f"{where}.{unknown[0]}: unknown field")
        rate = data.get("rate")
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
            raise ValueError(f"{where}.rate: must be a number between 0 and 1")
        kinds = data.get("kinds", list(KINDS))
        if not isinstance(kinds, list) or not kinds or any(k not in KINDS for k in kinds):
            raise ValueError(f"{where}.kinds: must be a non-empty list of {', '.join(KINDS)}")
        return cls(float(rate), tuple(kinds))

    def kind(self, u: float) -> str:
        """The kind for a request whose draw is ``u`` in [0, 1)."""
        return self.kinds[min(int(u * len(self.kinds)), len(self.kinds) - 1)]


@dataclass(frozen=True)
class Reply:
    """One answer: its text, stop reason and content blocks (None: one text block with ``text``)."""

    text: str
    stop_reason: str = "end_turn"
    content: list[dict[str, Any]] | None = None


def broken_reply(kind: str, category_kind: str, labels: list[str], text: str, u: float) -> Reply:
    """The right answer ``text`` broken as ``kind`` says (``u``: a draw in [0, 1) for the shape)."""
    half = text[:max(1, len(text) // 2)]
    if kind == "refusal":
        return Reply(REFUSAL, "refusal")
    if kind == "truncated":
        return Reply(half, "max_tokens")
    if kind == "empty":
        return Reply("", "end_turn", [] if u < 0.5 else [{"type": "text", "text": ""}])
    if category_kind == "json":
        return Reply(half)
    if category_kind == "label":
        taken = {label.casefold() for label in labels}
        return Reply(next((x for x in OUTSIDE if x.casefold() not in taken), "NONE-OF-THESE"))
    return Reply("N/A")
