"""Shadows yield to production's rate limits: a 429 on model M pauses every shadow call to M.

A 429 seen by the wrapper or the gateway (production's) or by a worker (a
shadow's own) sets ``tierguard:pause:M`` until its ``retry-after`` is over (a
default when the answer gives none); the key only ever moves later and expires
by itself. Before calling, a worker defers the jobs whose model is paused: they
are re-queued for when the pause ends, without spending an attempt, and are
recorded as skipped (``rate_headroom``) only once they have waited longer than
``shadow_headroom.max_defer_minutes``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Any

import redis as redis_lib

from tierguard.contract import keys

DEFAULT_PAUSE_S = 10.0
MAX_PAUSE_S = 600.0

# KEYS[1] the pause key; ARGV[1] until (epoch s), ARGV[2] ttl (s): only ever later.
_LATER = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > cur then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return 1
end
return 0
"""


def pause(r: redis_lib.Redis, model: str, retry_after: float | None, now: float | None = None) -> float:
    """Pause shadows to ``model`` for ``retry_after`` seconds (bounded); until when."""
    seconds = min(MAX_PAUSE_S, max(1.0, retry_after if retry_after is not None else DEFAULT_PAUSE_S))
    until = (now or time.time()) + seconds
    r.eval(_LATER, 1, keys.PAUSE.format(model=model), f"{until:.3f}", math.ceil(seconds) + 1)
    return until


def paused(r: redis_lib.Redis, models: Iterable[str], now: float | None = None) -> dict[str, float]:
    """The models among ``models`` whose shadows must wait, with until when."""
    names = sorted(set(models))
    if not names:
        return {}
    return pending(names, r.mget(pause_keys(names)), now)


def pause_keys(names: list[str]) -> list[str]:
    return [keys.PAUSE.format(model=m) for m in names]


def pending(names: list[str], values: list[Any], now: float | None = None) -> dict[str, float]:
    """The pauses still running among ``names``, given their keys' ``values`` (as MGET answers)."""
    now = now or time.time()
    out = {}
    for model, value in zip(names, values, strict=True):
        try:
            until = float(value) if value is not None else 0.0
        except ValueError:
            continue
        if until > now:
            out[model] = until
    return out
