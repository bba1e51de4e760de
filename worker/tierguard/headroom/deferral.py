"""When a shadow call must wait: the rule that makes shadows yield to production's rate limits.

A call to a model waits while any of its *gates* is shut: a pause after a 429
(:mod:`~tierguard.headroom.pauses`), rate-limit headroom under
``shadow_headroom.min_remaining`` (:mod:`~tierguard.headroom.ratelimits`), or the model's hard
cap (``shadow_limits``, :mod:`~tierguard.headroom.caps`). A model's gates are the shadow
key's own and, unless a separate key does not follow it, production's. A job that waited longer
than ``shadow_headroom.max_defer_minutes`` is given up on (:func:`waited_too_long`).
:class:`Room` reads and writes all of it in Redis for one worker; Redis errors fail open
(the call goes; a 429 pauses it) except where the caller must know.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import redis as redis_lib

from tierguard import metrics
from tierguard.contract import keys
from tierguard.headroom import pauses, ratelimits

log = logging.getLogger(__name__)


def waited_too_long(since: dt.datetime | None, now: float, max_defer_minutes: float) -> bool:
    """Whether a job first deferred at ``since`` has waited past the limit (the pure rule)."""
    return since is not None and now - since.timestamp() > max_defer_minutes * 60


@dataclass(frozen=True)
class Room:
    """One worker's view of the room shadows to each model have.

    ``headroom`` is the policy's ``shadow_headroom``, ``limits`` its ``shadow_limits``
    (model -> cap), ``caps`` the process's :class:`~tierguard.headroom.caps.ShadowCaps`
    and ``scope`` the shadow key's fingerprint ("" when shadows share production's key).
    """

    redis: redis_lib.Redis | None
    scope: str
    headroom: Any
    limits: Mapping[str, Any]
    caps: Any = None

    def gates(self, model: str) -> list[str]:
        """The names whose pauses and headroom hold calls to ``model`` back."""
        own = ratelimits.scoped(model, self.scope)
        if self.scope and not self.headroom.follow_production:
            return [own]
        return sorted({own, model})

    def shut(self, models: Iterable[str]) -> dict[str, float]:
        """Gate name -> until when it is shut (paused, or short of headroom), for every gate of
        ``models`` that is. Raises ``RedisError``: the caller decides what an unknown means."""
        names = sorted({g for m in models for g in self.gates(m)})
        if not names:
            return {}
        pipe = self.redis.pipeline(transaction=False)  # one round trip: the pauses and the views
        pipe.mget(pauses.pause_keys(names))
        ratelimits.ask(pipe, names)
        values, *views = pipe.execute()
        now = time.time()
        waits = pauses.pending(names, values, now)
        low = ratelimits.lows(names, views, self.headroom.min_remaining, now)
        for name, (_, _, until) in low.items():
            if name in waits:
                continue  # paused: the pause says until when
            waits[name] = until  # the headroom is short: wait until it is back at the floor
        return waits

    def until(self, model: str, shut: Mapping[str, float]) -> float:
        """Until when calls to ``model`` wait, given :meth:`shut`'s answer (0: they may go)."""
        return max((shut.get(g, 0.0) for g in self.gates(model)), default=0.0)

    def capped(self, model: str, input_tokens: int) -> float | None:
        """Until when a call to ``model`` waits for its hard cap (None: it may go, and it is
        counted). Without the caps' store the call goes (fail open)."""
        cap = self.limits.get(model)
        if cap is None or self.caps is None:
            return None
        try:
            return self.caps.take(cap, ratelimits.scoped(model, self.scope), input_tokens)
        except redis_lib.RedisError as err:
            log.warning("shadow caps unavailable (%s); calling without them", err)
            return None

    def pause(self, model: str, seconds: float) -> float:
        """Pause calls to ``model`` (after a 429); until when (best effort)."""
        try:
            return pauses.pause(self.redis, ratelimits.scoped(model, self.scope), seconds)
        except redis_lib.RedisError:
            return time.time() + seconds

    def remember(self, headers: Mapping[str, Any]) -> None:
        """Keep the latest rate-limit view per model (model -> an answer's headers) for every
        worker to read; the next answers bring it again if Redis is away."""
        views = {model: view for model, h in headers.items() if (view := ratelimits.parse(h))}
        for model, view in views.items():
            for family, (share, _) in view.items():
                metrics.HEADROOM.labels(model, family).set(share)
        try:
            ratelimits.record_all(self.redis, {ratelimits.scoped(m, self.scope): v for m, v in views.items()})
        except redis_lib.RedisError as err:
            log.debug("rate-limit views not kept: %s", err)

    def spent(self, output_tokens: Mapping[str, int]) -> None:
        """Add output tokens spent (model -> tokens) to the models' caps."""
        try:
            for model, tokens in output_tokens.items():
                if model in self.limits and self.caps is not None:
                    self.caps.spent(self.limits[model], ratelimits.scoped(model, self.scope), tokens)
        except redis_lib.RedisError as err:
            log.warning("cannot count shadow output tokens against the caps: %s", err)

    def count_deferred(self, models: list[str]) -> None:
        """Deferred calls per model, for Prometheus and ``status`` (best effort)."""
        for model in models:
            metrics.DEFERRED.labels(model).inc()
        if not models or self.redis is None:
            return
        try:
            pipe = self.redis.pipeline(transaction=False)
            for model in models:
                pipe.hincrby(keys.DEFERRED, model, 1)
            pipe.execute()
        except redis_lib.RedisError as err:
            log.debug("deferral counts not kept: %s", err)
