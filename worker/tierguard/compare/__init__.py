"""Comparators: decide whether two model answers agree, and say why.

A comparator is any object with ``compare(primary, shadow) -> Verdict``
(:mod:`~tierguard.compare.base`). Built-ins are named in
:data:`~tierguard.compare.registry.COMPARATORS`, one module per family;
:func:`resolve` turns a policy spec (``"exact"``, ``{"type": "label", ...}`` or
a dotted path ``"pkg.module:Class"``) into an instance. Answers that cannot be
read (no label, no JSON, no number) are disagreements whose ``reason`` says why.
:class:`Checks` (:mod:`~tierguard.compare.checks`) reads one answer against its
category's format (and ``escalate_on``) without a second answer.

Owns: the protocol, the registry, the built-in comparators, the answer checks.
Imports nothing of tierguard's but its own modules, ``errors`` and
``contract.messages`` (an answer's comparable text); nothing here does I/O.
"""

from tierguard.compare.base import Comparator, Verdict, normalise
from tierguard.compare.checks import REASONS, Checks, Failure
from tierguard.compare.json_fields import Json, extract_json
from tierguard.compare.judge import Judge
from tierguard.compare.label import Exact, Label
from tierguard.compare.numeric import Numeric, extract_number
from tierguard.compare.registry import COMPARATORS, pattern_of, resolve
from tierguard.compare.similarity import Similarity, rouge_l, token_f1

__all__ = ["COMPARATORS", "REASONS", "Checks", "Comparator", "Exact", "Failure", "Json", "Judge", "Label",
           "Numeric", "Similarity", "Verdict", "extract_json", "extract_number", "normalise",
           "pattern_of", "resolve", "rouge_l", "token_f1"]
