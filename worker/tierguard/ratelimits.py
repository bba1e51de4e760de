"""The Messages API's rate-limit headers, read into remaining shares per limit family.

Every response carries ``anthropic-ratelimit-{family}-{limit,remaining,reset}`` for
``requests``, ``tokens``, ``input-tokens`` and ``output-tokens`` (reset as an RFC 3339
time). :func:`parse` keeps what is well formed and ignores the rest, never raising.
:func:`record` keeps the latest view per model in Redis until its reset;
:func:`low` says which models have less than ``min_remaining`` of a limit left.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable, Mapping
from typing import Any

import redis as redis_lib

FAMILIES = ("requests", "tokens", "input-tokens", "output-tokens")
KEY = "tierguard:headroom:{model}"


def parse(headers: Mapping[str, Any], now: float | None = None) -> dict[str, tuple[float, float]]:
    """family -> (remaining share 0..1, reset epoch s), for the families the headers give."""
    now = now or time.time()
    out: dict[str, tuple[float, float]] = {}
    for family in FAMILIES:
        prefix = f"anthropic-ratelimit-{family}-"
        try:
            limit = float(headers.get(prefix + "limit") or 0)
            remaining = float(headers.get(prefix + "remaining") or "nan")
            reset_raw = headers.get(prefix + "reset")
            reset = (dt.datetime.fromisoformat(str(reset_raw).replace("Z", "+00:00")).timestamp()
                     if reset_raw else now + 60)
        except (TypeError, ValueError):
            continue
        if limit > 0 and remaining == remaining and remaining >= 0:  # not NaN
            out[family] = (min(1.0, remaining / limit), reset)
    return out


def record(r: redis_lib.Redis, model: str, view: dict[str, tuple[float, float]],
           now: float | None = None) -> None:
    """Keep ``view`` as ``model``'s latest, until its last reset."""
    if not view:
        return
    now = now or time.time()
    key = KEY.format(model=model)
    mapping = {f: f"{share:.4f}|{reset:.3f}|{now:.3f}" for f, (share, reset) in view.items()}
    ttl = max(1, int(max(reset for _, reset in view.values()) - now) + 1)
    pipe = r.pipeline(transaction=True)
    pipe.hset(key, mapping=mapping)
    pipe.expire(key, min(ttl, 3600))
    pipe.execute()


def low(r: redis_lib.Redis, models: Iterable[str], min_remaining: float,
        now: float | None = None) -> dict[str, tuple[str, float, float]]:
    """model -> (family, share, reset) for models with a family under ``min_remaining``."""
    names = sorted(set(models))
    if not names:
        return {}
    now = now or time.time()
    pipe = r.pipeline(transaction=False)
    for m in names:
        pipe.hgetall(KEY.format(model=m))
    out = {}
    for model, raw in zip(names, pipe.execute(), strict=True):
        worst = None
        for family, value in raw.items():
            try:
                share_s, reset_s, _ = value.decode().split("|")
                share, reset = float(share_s), float(reset_s)
            except (ValueError, AttributeError):
                continue
            if reset > now and share < min_remaining and (worst is None or share < worst[1]):
                worst = (family.decode(), share, reset)
        if worst:
            out[model] = worst
    return out


def view(r: redis_lib.Redis, model: str) -> dict[str, float]:
    """family -> remaining share, as last seen (for status)."""
    out = {}
    for family, value in r.hgetall(KEY.format(model=model)).items():
        try:
            out[family.decode().replace("-", "_")] = float(value.decode().split("|")[0])
        except (ValueError, AttributeError):
            continue
    return out
