"""Hard caps on shadow calls per model, across every worker process and host (``shadow_limits``).

Counted in Redis by the ``limits`` library: requests in an exact moving window (one
entry per call), tokens in sliding-window counters (two counters per minute: one
increment per call, not one entry per token; approximate for bursts). Before a
call the request and its estimated input tokens are taken; a job that does not
fit waits, as a paused one does. Output tokens are only known after the call:
they are added then (a cap can be overrun by one call's output), and no call
starts while the output window is full.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from limits import RateLimitItemPerMinute
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter, SlidingWindowCounterRateLimiter

from tierguard.contract import keys

log = logging.getLogger(__name__)
NAMESPACE = "tierguard-shadow-cap"


class ShadowCaps:
    """One per worker process; caps come from the policy on every call (it may change)."""

    def __init__(self, redis_url: str):
        self._url = redis_url
        self._limiters: dict[str, Any] = {}
        self._items: dict[tuple[str, int], RateLimitItemPerMinute] = {}

    def limiter(self, family: str) -> Any:
        if not self._limiters:
            storage = storage_from_string(self._url, key_prefix=keys.CAPS, socket_timeout=2,
                                          socket_connect_timeout=2)
            self._limiters = {"requests": MovingWindowRateLimiter(storage),
                              "tokens": SlidingWindowCounterRateLimiter(storage)}
        return self._limiters["requests" if family == "requests" else "tokens"]

    def _item(self, family: str, amount: int) -> RateLimitItemPerMinute:
        item = self._items.get((family, amount))
        if item is None:
            item = self._items[(family, amount)] = RateLimitItemPerMinute(amount, namespace=NAMESPACE)
        return item

    def take(self, cap: Any, model: str, input_tokens: int, now: float | None = None) -> float | None:
        """Count one call to ``model`` now; None if it fits, else the epoch second to wait until."""
        checks = [(f, n, c) for f, n, c in (
            ("requests", cap.requests_per_minute, 1),
            ("input_tokens", cap.input_tokens_per_minute, max(1, input_tokens)),
            ("output_tokens", cap.output_tokens_per_minute, 1)) if n]
        for family, amount, cost in checks:
            item = self._item(family, amount)
            if not self.limiter(family).test(item, model, family, cost=min(cost, amount)):
                return self._reset(item, model, family, now)
        for family, amount, cost in checks:
            if family == "output_tokens":
                continue  # added after the call, with what it really spent
            item = self._item(family, amount)
            if not self.limiter(family).hit(item, model, family, cost=min(cost, amount)):  # raced
                return self._reset(item, model, family, now)
        return None

    def spent(self, cap: Any, model: str, output_tokens: int) -> None:
        """Add a finished call's output tokens (what fits; the window is full after)."""
        amount = cap.output_tokens_per_minute
        if not amount or output_tokens <= 0:
            return
        item = self._item("output_tokens", amount)
        limiter = self.limiter("output_tokens")
        cost = min(output_tokens, amount)
        if not limiter.hit(item, model, "output_tokens", cost=cost):
            left = limiter.get_window_stats(item, model, "output_tokens").remaining
            if left > 0:
                limiter.hit(item, model, "output_tokens", cost=left)

    def _reset(self, item: RateLimitItemPerMinute, model: str, family: str,
               now: float | None) -> float:
        stats = self.limiter(family).get_window_stats(item, model, family)
        now = now or time.time()
        # A sliding window frees room gradually: look again soon, at most at its reset.
        return min(max(stats.reset_time, now + 1.0), now + 60.0)
