"""The production-side wrapper: ``messages.create`` plus a ``category``.

tierguard picks the model from the category's route, returns the SDK's own
object untouched, and copies a sampled share of calls to the shadow pipeline.
Nothing tierguard does on the side can raise into the caller or wait on I/O.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import time
from typing import Any

import redis as redis_lib

from tierguard.app.publisher import Publisher
from tierguard.config import Settings, get_settings
from tierguard.db import make_engine
from tierguard.policy import CategoryPolicy, Policy, load_policy
from tierguard.routes import RouteTable

log = logging.getLogger(__name__)


class _Core:
    """State shared by the sync and async wrappers: policy, routes, publisher, counters."""

    def __init__(self, settings: Settings | None, policy: Policy | None, start_routes: bool = True):
        self.settings = settings or get_settings()
        self.policy = policy or load_policy(self.settings.policy)
        self.categories: dict[str, CategoryPolicy] = {}
        url = self.settings.redis_url
        self.routes = RouteTable(
            lambda: redis_lib.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1),
            self.settings.route_ttl,
            lambda: make_engine(self.settings.database_url, pool_size=1),
        )
        if start_routes:
            self.routes.start()
        self.publisher = Publisher(self.settings)
        self.errors = 0

    def category(self, name: str) -> CategoryPolicy:
        cat = self.categories.get(name)
        if cat is None:
            cat = self.categories[name] = self.policy.category(name)
        return cat

    def route(self, name: str, kwargs: dict[str, Any]) -> tuple[CategoryPolicy | None, dict]:
        try:
            cat = self.category(name)
            return cat, {**kwargs, "model": self.routes.get(name, cat.initial_route)}
        except Exception:
            self._failed("routing")
            return None, kwargs

    def after(self, cat: CategoryPolicy | None, kwargs: dict[str, Any], message: Any,
              started: float) -> None:
        try:
            if cat is None:
                return
            self.publisher.count_call(cat.name)
            if kwargs.get("stream") or random.random() >= cat.sample_rate:
                return
            model = kwargs["model"]
            self.publisher.submit(cat.name, model, cat.other_model(model), kwargs, message,
                                  (time.perf_counter() - started) * 1000, dt.datetime.now(dt.UTC))
        except Exception:
            self._failed("sampling")

    def _failed(self, where: str) -> None:
        self.errors += 1
        log.exception("tierguard: %s failed; the call goes on unshadowed", where)

    def stats(self) -> dict[str, int]:
        return {**self.publisher.counts, "internal_errors": self.errors,
                "route_refresh_failures": self.routes.failures}

    def close(self) -> None:
        self.routes.stop()
        self.publisher.close()


class _Messages:
    def __init__(self, messages: Any, core: _Core):
        self._messages = messages
        self._core = core

    def create(self, *, category: str | None = None, **kwargs: Any) -> Any:
        if category is None:
            return self._messages.create(**kwargs)
        cat, kwargs = self._core.route(category, kwargs)
        started = time.perf_counter()
        message = self._messages.create(**kwargs)
        self._core.after(cat, kwargs, message, started)
        return message

    def __getattr__(self, name: str) -> Any:
        return getattr(self._messages, name)


class _AsyncMessages(_Messages):
    async def create(self, *, category: str | None = None, **kwargs: Any) -> Any:  # type: ignore[override]
        if category is None:
            return await self._messages.create(**kwargs)
        cat, kwargs = self._core.route(category, kwargs)
        started = time.perf_counter()
        message = await self._messages.create(**kwargs)
        self._core.after(cat, kwargs, message, started)
        return message


class ShadowedAnthropic:
    """Wraps an ``anthropic.Anthropic``; everything but ``messages.create`` passes through."""

    _messages_class = _Messages

    def __init__(self, client: Any, *, settings: Settings | None = None,
                 policy: Policy | None = None):
        self._client = client
        self._core = _Core(settings, policy)
        self.messages = self._messages_class(client.messages, self._core)

    def tierguard_stats(self) -> dict[str, int]:
        """Counters: submitted, published, dropped_* and internal errors."""
        return self._core.stats()

    def tierguard_flush(self, timeout: float = 5.0) -> bool:
        return self._core.publisher.flush(timeout)

    def tierguard_close(self) -> None:
        self._core.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


class AsyncShadowedAnthropic(ShadowedAnthropic):
    """The same for ``anthropic.AsyncAnthropic``."""

    _messages_class = _AsyncMessages
