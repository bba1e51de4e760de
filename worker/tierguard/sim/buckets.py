"""Rate-limit token buckets of the simulated API, per (API key fingerprint, model).

Each configured family — requests, input tokens, output tokens per minute — is a bucket
holding at most its per-minute limit and refilling continuously at ``limit/60`` per scaled
second (``time_scale`` 60 makes a minute last one real second). A request needs one request
and its estimated input tokens (a request larger than a bucket needs only a full bucket) and
an output bucket above zero; its output tokens are deducted once answered, so the level can
go negative and make the next requests wait. The ``anthropic-ratelimit-tokens-*`` headers
combine the token families: limit = sum of the limits, remaining = that sum times the smaller
of the two remaining shares, reset = the later reset.

Limits come from the scenario's ``rate_limits`` (``{MODEL: {requests_per_minute,
input_tokens_per_minute, output_tokens_per_minute, time_scale, keys: {API_KEY: {...}}}}``;
a key's entry overrides the model's fields) and from ``POST /_sim/buckets``. Keys are only
ever kept as ``fingerprint(key)``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

FIELDS = {"requests": "requests_per_minute", "input-tokens": "input_tokens_per_minute",
          "output-tokens": "output_tokens_per_minute"}


def fingerprint(key: str) -> str:
    """The first 12 hex digits of the key's SHA-256: how keys appear in stats."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def _reset_time(seconds: float) -> str:
    t = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=math.ceil(max(0.0, seconds)))
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


class Bucket:
    def __init__(self, capacity: float, time_scale: float, now: float):
        self.capacity = capacity
        self.rate = capacity / 60 * time_scale  # per real second
        self.level = capacity
        self.t = now

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.t) * self.rate)
        self.t = now

    def wait(self, need: float) -> float:
        """Real seconds until ``need`` (at most a full bucket) is there."""
        return max(0.0, (min(need, self.capacity) - self.level) / self.rate)

    def until_full(self) -> float:
        return (self.capacity - self.level) / self.rate

    def remaining(self) -> int:
        return max(0, math.floor(self.level))


@dataclass
class Gate:
    """The outcome of ``BucketStore.admit``: ``retry_after`` is set when refused (real seconds)."""

    headers: dict[str, str]
    retry_after: float | None = None
    family: str = ""


class BucketStore:
    def __init__(self, rate_limits: dict[str, Any] | None = None, time_scale: float = 1.0,
                 clock: Callable[[], float] = time.monotonic):
        self.lock = threading.Lock()
        self.clock = clock
        self.time_scale = float(time_scale)
        self.limits: dict[str, dict[str, float]] = {}  # model -> fields
        self.overrides: dict[tuple[str, str], dict[str, float]] = {}  # (model, fingerprint) -> fields
        self.buckets: dict[tuple[str, str], dict[str, Bucket]] = {}  # (model, fingerprint) -> family
        self.served: Counter[str] = Counter()
        self.rate_limited: Counter[str] = Counter()
        self.by_key: defaultdict[str, defaultdict[str, Counter[str]]] = defaultdict(
            lambda: defaultdict(Counter))
        for model, cfg in (rate_limits or {}).items():
            cfg = dict(cfg or {})
            for key, over in (cfg.pop("keys", None) or {}).items():
                self.overrides[(model, fingerprint(str(key)))] = _fields(over)
            self.limits[model] = _fields(cfg)

    def configure(self, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /_sim/buckets``: set (or ``clear``) a model's limits, or one key's override;
        the buckets concerned start again full."""
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise ValueError("model is required")
        fp = fingerprint(str(body["key"])) if body.get("key") is not None else None
        with self.lock:
            if body.get("clear"):
                if fp:
                    self.overrides.pop((model, fp), None)
                else:
                    self.limits.pop(model, None)
                    for k in [k for k in self.overrides if k[0] == model]:
                        del self.overrides[k]
            elif fp:
                self.overrides[(model, fp)] = _fields(body)
            else:
                self.limits[model] = _fields(body)
            for k in [k for k in self.buckets if k[0] == model and fp in (None, k[1])]:
                del self.buckets[k]
            return {"models": sorted({*self.limits, *(m for m, _ in self.overrides)})}

    def _config(self, model: str, fp: str) -> dict[str, float]:
        return {**self.limits.get(model, {}), **self.overrides.get((model, fp), {})}

    def _buckets(self, model: str, fp: str) -> dict[str, Bucket] | None:
        """The refilled buckets of (model, key), made on first use; None when unlimited."""
        now = self.clock()
        found = self.buckets.get((model, fp))
        if found is None:
            cfg = self._config(model, fp)
            scale = cfg.get("time_scale", self.time_scale)
            found = {fam: Bucket(cfg[name], scale, now) for fam, name in FIELDS.items() if cfg.get(name)}
            if not found:
                return None
            self.buckets[(model, fp)] = found
        for b in found.values():
            b.refill(now)
        return found

    def admit(self, fp: str, model: str, input_tokens: int) -> Gate | None:
        """Take one request and ``input_tokens``, or refuse; None for a model without buckets."""
        need = {"requests": 1, "input-tokens": input_tokens, "output-tokens": 1}
        with self.lock:
            buckets = self._buckets(model, fp)
            if buckets is None:
                return None
            waits = {fam: b.wait(need[fam]) for fam, b in buckets.items()}
            family, wait = max(waits.items(), key=lambda kv: kv[1])
            if wait > 0:
                self.rate_limited[model] += 1
                self.by_key[fp][model]["rate_limited"] += 1
                return Gate(_headers(buckets), wait, family)
            for fam in ("requests", "input-tokens"):
                if fam in buckets:
                    buckets[fam].level -= need[fam]
            return Gate(_headers(buckets))

    def finish(self, fp: str, model: str, output_tokens: int) -> dict[str, str] | None:
        """Deduct an answer's output tokens; the headers to send with it."""
        with self.lock:
            buckets = self._buckets(model, fp)
            if buckets is None:
                return None
            if "output-tokens" in buckets:
                buckets["output-tokens"].level -= output_tokens
            return _headers(buckets)

    def note_served(self, fp: str, model: str) -> None:
        with self.lock:
            self.served[model] += 1
            self.by_key[fp][model]["served"] += 1

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {"rate_limited": dict(self.rate_limited), "served": dict(self.served),
                    "by_key": {fp: {m: {"served": c["served"], "rate_limited": c["rate_limited"]}
                                    for m, c in models.items()} for fp, models in self.by_key.items()}}


def _fields(cfg: dict[str, Any]) -> dict[str, float]:
    out = {name: float(cfg[name]) for name in FIELDS.values() if cfg.get(name) is not None}
    if any(v <= 0 for v in out.values()):
        raise ValueError("limits must be positive")
    if cfg.get("time_scale") is not None:
        out["time_scale"] = float(cfg["time_scale"])
        if out["time_scale"] <= 0:
            raise ValueError("time_scale must be positive")
    return out


def _headers(buckets: dict[str, Bucket]) -> dict[str, str]:
    headers = {}
    for fam, b in buckets.items():
        headers |= {f"anthropic-ratelimit-{fam}-limit": str(int(b.capacity)),
                    f"anthropic-ratelimit-{fam}-remaining": str(b.remaining()),
                    f"anthropic-ratelimit-{fam}-reset": _reset_time(b.until_full())}
    tokens = [b for fam, b in buckets.items() if fam != "requests"]
    if tokens:
        limit = sum(b.capacity for b in tokens)
        share = min(b.remaining() / b.capacity for b in tokens)
        headers |= {"anthropic-ratelimit-tokens-limit": str(int(limit)),
                    "anthropic-ratelimit-tokens-remaining": str(math.floor(limit * share)),
                    "anthropic-ratelimit-tokens-reset": _reset_time(max(b.until_full() for b in tokens))}
    return headers
