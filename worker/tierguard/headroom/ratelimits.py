"""The Messages API's rate-limit headers, read into remaining shares per limit family.

Every response carries ``anthropic-ratelimit-{family}-{limit,remaining,reset}`` for
``requests``, ``tokens``, ``input-tokens`` and ``output-tokens`` (reset as an RFC 3339
time). :func:`parse` keeps what is well formed and ignores the rest, never raising.
:func:`record` keeps the latest view per model in Redis until its reset;
:func:`low` says which models have less than ``min_remaining`` of a limit left (projected
from when it was seen: limits refill steadily until their reset).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from collections.abc import Iterable, Mapping
from typing import Any

import redis as redis_lib

from tierguard.contract import keys

FAMILIES = ("requests", "tokens", "input-tokens", "output-tokens")


def fingerprint(api_key: str) -> str:
    """What names an API key in Redis and in status (never the key itself)."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:12]


def scoped(model: str, scope: str = "") -> str:
    """The name pauses and views of ``model`` are kept under: production's (and shadows' sharing
    its key) by the model alone, a separate shadow key's as ``model@fingerprint``."""
    return f"{model}@{scope}" if scope else model


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


def record_all(r: redis_lib.Redis, views: Mapping[str, dict[str, tuple[float, float]]],
               now: float | None = None) -> None:
    """Keep each model's latest view (model -> view), until its last reset: one transaction."""
    views = {model: view for model, view in views.items() if view}
    if not views:
        return
    now = now or time.time()
    pipe = r.pipeline(transaction=True)
    for model, view in views.items():
        key = keys.HEADROOM.format(model=model)
        ttl = max(1, int(max(reset for _, reset in view.values()) - now) + 1)
        mapping = {f: f"{share:.4f}|{reset:.3f}|{now:.3f}" for f, (share, reset) in view.items()}
        pipe.hset(key, mapping=mapping)
        pipe.expire(key, min(ttl, 3600))
    pipe.execute()


def projected(share: float, reset: float, seen: float, now: float) -> float:
    """A view's share at ``now``: limits refill steadily from when it was seen until the reset
    (production's use since then shows in the next answer's headers)."""
    if reset <= seen or now >= reset:
        return 1.0
    return min(1.0, share + (1.0 - share) * max(0.0, now - seen) / (reset - seen))


def regained(share: float, reset: float, seen: float, target: float) -> float:
    """When a view's projected share reaches ``target`` (epoch s)."""
    if share >= target or reset <= seen:
        return seen
    return seen + (reset - seen) * (target - share) / (1.0 - share)


def low(r: redis_lib.Redis, models: Iterable[str], min_remaining: float,
        now: float | None = None) -> dict[str, tuple[str, float, float]]:
    """model -> (family, projected share, until when) for models with a family projected under
    ``min_remaining`` now; until is when it is back at ``min_remaining`` (not the full reset:
    the floor is under production's bursts, not a cap on what shadows use of the rest)."""
    names = sorted(set(models))
    if not names:
        return {}
    pipe = r.pipeline(transaction=False)
    ask(pipe, names)
    return lows(names, pipe.execute(), min_remaining, now)


def ask(pipe: Any, names: list[str]) -> None:
    """Queue the reads of ``names``' kept views on ``pipe`` (their answers: :func:`lows`'s ``raws``)."""
    for name in names:
        pipe.hgetall(keys.HEADROOM.format(model=name))


def lows(names: list[str], raws: list[Mapping[bytes, bytes]], min_remaining: float,
         now: float | None = None) -> dict[str, tuple[str, float, float]]:
    """:func:`low`'s answer from the models' kept views (``raws``, as HGETALL answers)."""
    now = now or time.time()
    out = {}
    for model, raw in zip(names, raws, strict=True):
        worst = None
        for family, value in raw.items():
            try:
                share, reset, seen = (float(x) for x in value.decode().split("|"))
            except (ValueError, AttributeError):
                continue
            share_now = projected(share, reset, seen, now)
            if share_now < min_remaining:
                until = max(now + 0.05, regained(share, reset, seen, min_remaining))
                if worst is None or until > worst[2]:
                    worst = (family.decode(), share_now, until)
        if worst:
            out[model] = worst
    return out


def view(r: redis_lib.Redis, model: str) -> dict[str, float]:
    """family -> remaining share, as last seen (for status)."""
    out = {}
    for family, value in r.hgetall(keys.HEADROOM.format(model=model)).items():
        try:
            out[family.decode().replace("-", "_")] = float(value.decode().split("|")[0])
        except (ValueError, AttributeError):
            continue
    return out
