"""The production-side wrapper: ``messages.create`` and ``messages.stream`` plus a ``category``.

tierguard picks the model from the category's route, returns the SDK's own
object untouched (a ``Message``, a ``Stream``, a stream manager), and copies a
sampled share of calls to the shadow pipeline: a streamed call once its stream
has reached ``message_stop``. Nothing tierguard does on the side can raise into
the caller or wait on I/O.
"""

from __future__ import annotations

import time
from typing import Any

import anthropic

from tierguard.app.core import Core
from tierguard.app.stream import watch_sdk_manager, watch_sdk_stream
from tierguard.config import Settings
from tierguard.policy import Policy

_SDK_CREATE = {anthropic.resources.Messages: anthropic.resources.Messages.create,
               anthropic.resources.AsyncMessages: anthropic.resources.AsyncMessages.create}


def _raw_create(messages: Any) -> Any:
    """The SDK's ``with_raw_response.create`` when ``messages`` is the SDK's own and its ``create``
    is unpatched, now (a test double or a patched ``create``, on the object or its class, is
    called as it is, and its headers are not read)."""
    kind = type(messages)
    if kind not in _SDK_CREATE or kind.create is not _SDK_CREATE[kind] or "create" in vars(messages):
        return None
    return messages.with_raw_response.create


class _Messages:
    def __init__(self, messages: Any, core: Core, defaults: Any = None, routable: bool = True):
        self._messages = messages
        self._core = core
        self._defaults = defaults  # the client's default headers (their anthropic-beta is kept)
        self._routable = routable

    def _plain(self, category: str | None) -> bool:
        """True for a call passed through untouched: no category, or a client tierguard cannot route."""
        if category is not None and not self._routable:
            self._core.check_fork(start=False)
            self._core.counts["unroutable_client"] += 1
        return category is None or not self._routable

    def create(self, *, category: str | None = None, **kwargs: Any) -> Any:
        if self._plain(category):
            return self._messages.create(**kwargs)
        cat, kwargs = self._core.route(category, kwargs)
        started = time.perf_counter()
        raw = _raw_create(self._messages)
        try:
            if raw is None:
                result = self._messages.create(**kwargs)
            else:  # the same call and object; the response's headers kept for their rate limits
                response = raw(**kwargs)
                result = response.parse()
                self._core.saw_headers(kwargs.get("model"), response.headers)
        except anthropic.RateLimitError as err:
            self._core.rate_limited(kwargs.get("model"), err.response.headers.get("retry-after"))
            self._core.saw_headers(kwargs.get("model"), err.response.headers)
            raise
        self._after(cat, kwargs, result, started)
        return result


    def _after(self, cat: Any, kwargs: dict[str, Any], result: Any, started: float) -> None:
        core = self._core
        sampled = core.sampled(cat, kwargs)
        if not kwargs.get("stream"):
            core.served(cat, kwargs, getattr(result, "usage", None))
            headers, body = self._snapshot(kwargs) if sampled else (None, None)
            if body is not None:
                core.submit(cat, kwargs, result, started, headers, body)
            return
        if cat is None:
            return
        try:
            watch_sdk_stream(result, self._on_message(cat, kwargs, started, sampled),
                             usage_only=not sampled)
        except Exception:
            core._failed("watching a stream")

    def _snapshot(self, kwargs: dict[str, Any]) -> tuple[Any, Any]:
        """(headers, body) of a sampled call, taken now; (None, None) if that failed (counted)."""
        taken = self._core.snapshot(kwargs, self._defaults)
        return taken if taken is not None else (None, None)

    def _on_message(self, cat: Any, kwargs: dict[str, Any], started: float, sampled: bool) -> Any:
        core = self._core
        headers, body = self._snapshot(kwargs) if sampled else (None, None)  # before any next turn

        def on_message(message: dict[str, Any]) -> None:
            core.served(cat, kwargs, message.get("usage"))
            if body is not None:
                core.submit(cat, kwargs, message, started, headers, body)
        return on_message

    def stream(self, *, category: str | None = None, **kwargs: Any) -> Any:
        if self._plain(category):
            return self._messages.stream(**kwargs)
        core = self._core
        cat, kwargs = core.route(category, kwargs)
        started = time.perf_counter()
        manager = self._messages.stream(**kwargs)
        sampled = core.sampled(cat, kwargs)
        if cat is not None:
            try:
                if not watch_sdk_manager(manager, self._on_message(cat, kwargs, started, sampled),
                                         usage_only=not sampled):
                    core.counts["stream_unwatched"] += 1
            except Exception:
                core._failed("watching a stream")
        return manager

    def __getattr__(self, name: str) -> Any:
        return getattr(self._messages, name)


class _AsyncMessages(_Messages):
    async def create(self, *, category: str | None = None, **kwargs: Any) -> Any:  # type: ignore[override]
        if self._plain(category):
            return await self._messages.create(**kwargs)
        cat, kwargs = self._core.route(category, kwargs)
        started = time.perf_counter()
        raw = _raw_create(self._messages)
        try:
            if raw is None:
                result = await self._messages.create(**kwargs)
            else:
                response = await raw(**kwargs)
                result = await response.parse()
                self._core.saw_headers(kwargs.get("model"), response.headers)
        except anthropic.RateLimitError as err:
            self._core.rate_limited(kwargs.get("model"), err.response.headers.get("retry-after"))
            self._core.saw_headers(kwargs.get("model"), err.response.headers)
            raise
        self._after(cat, kwargs, result, started)
        return result


# Clients whose model ids tierguard cannot route yet (their platforms name models otherwise).
_UNROUTABLE = tuple(c for c in (getattr(anthropic, n, None) for n in (
    "AnthropicBedrock", "AsyncAnthropicBedrock", "AnthropicVertex", "AsyncAnthropicVertex"))
    if isinstance(c, type))


def unroutable(client: Any) -> bool:
    """True for a Bedrock or Vertex client: its calls pass through untouched, ``category``
    dropped and counted as ``unroutable_client``."""
    return isinstance(client, _UNROUTABLE)


class ShadowedAnthropic:
    """Wraps an ``anthropic.Anthropic``; everything but ``messages.create``/``stream`` passes through."""

    _messages_class = _Messages

    def __init__(self, client: Any, *, settings: Settings | None = None,
                 policy: Policy | None = None):
        self._client = client
        self._core = Core(settings, policy)
        self.messages = self._messages_class(client.messages, self._core,
                                             getattr(client, "_custom_headers", None),
                                             routable=not unroutable(client))

    def tierguard_stats(self) -> dict[str, int]:
        """Counters: submitted, published, dropped_* and internal errors."""
        return self._core.stats()

    def tierguard_flush(self, timeout: float = 5.0) -> bool:
        self._core.check_fork(start=False)
        return self._core.publisher.flush(timeout)

    def tierguard_close(self) -> None:
        self._core.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


class AsyncShadowedAnthropic(ShadowedAnthropic):
    """The same for ``anthropic.AsyncAnthropic``."""

    _messages_class = _AsyncMessages
