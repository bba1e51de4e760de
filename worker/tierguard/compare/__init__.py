"""Comparators: decide whether two model answers agree, and say why.

A comparator is any object with ``compare(primary, shadow) -> Verdict``
(:mod:`~tierguard.compare.base`). Built-ins are named in
:data:`~tierguard.compare.registry.COMPARATORS`, one module per family;
:func:`resolve` turns a policy spec (``"exact"``, ``{"type": "label", ...}`` or
a dotted path ``"pkg.module:Class"``) into an instance. Answers that cannot be
read (no label, no JSON, no number) are disagreements whose ``reason`` says why.

Owns: the protocol, the registry, the built-in comparators. Imports nothing of
tierguard's but its own modules; nothing here does I/O.
"""

from tierguard.compare.base import Comparator, Verdict, normalise
from tierguard.compare.json_fields import Json, extract_json
from tierguard.compare.judge import Judge
from tierguard.compare.label import Exact, Label
from tierguard.compare.numeric import Numeric, extract_number
from tierguard.compare.registry import COMPARATORS, resolve
from tierguard.compare.similarity import Similarity, rouge_l, token_f1

__all__ = ["COMPARATORS", "Comparator", "Exact", "Json", "Judge", "Label", "Numeric", "Similarity",
           "Verdict", "extract_json", "extract_number", "normalise", "resolve", "rouge_l",
           "token_f1"]
