"""The prompt fingerprint: a short hash of what defines a request's task, never its messages.

A Messages API body's task is fixed by the keys in :data:`TASK_KEYS`: ``system`` (the system
prompt), ``tools`` and ``tool_choice`` (the tool definitions and how they may be used), and the
output format settings ``output_format`` and ``output_config`` (structured outputs: the schema the
answer must follow). Everything else — ``messages``, ``model``, ``max_tokens``, sampling
parameters, ``metadata``, ``stream``, ``thinking`` — varies per call or tunes how an answer is
produced, not what it must be. ``cache_control`` markers are dropped wherever they sit (they
change caching, not the task), and a ``system`` given as a string counts as the one text block
it stands for. The rest goes into canonical JSON (sorted keys, no spaces), hashed with SHA-256,
the first :data:`LENGTH` hex digits kept. A key set to null counts as absent; a body with none of
them gets the hash of the empty set (``{}``): still a value.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

TASK_KEYS = ("system", "tools", "tool_choice", "output_format", "output_config")
LENGTH = 16


def _plain(value: Any) -> Any:
    """``value`` without ``cache_control`` keys, at any depth."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def task_of(request: dict[str, Any]) -> dict[str, Any]:
    """The keys of ``request`` that define its task, normalised (see the module's docstring)."""
    task = {key: _plain(request[key]) for key in TASK_KEYS if request.get(key) is not None}
    if isinstance(task.get("system"), str):
        task["system"] = [{"type": "text", "text": task["system"]}]
    return task


def prompt_fingerprint(request: dict[str, Any]) -> str:
    """The fingerprint of a Messages API body's task (:data:`LENGTH` hex digits)."""
    text = json.dumps(task_of(request), sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:LENGTH]
