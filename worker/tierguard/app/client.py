"""The production-side wrapper: the SDK's own client, plus ``category=``.

``ShadowedAnthropic(client)`` is a copy of ``client`` of a subclass of its class
(``isinstance(wrapped, anthropic.Anthropic)`` holds; a Bedrock, Vertex or custom
client gets a ``Shadowed…`` subclass of its own class), sending through the client's
own ``httpx2`` client wrapped in a :class:`~tierguard.app.transport.WatchingClient`.
Its ``messages`` and ``beta.messages`` take ``category=`` on every way of making a
message (:mod:`~tierguard.app.resources`); ``with_options``/``copy`` give a wrapper
sharing the same tierguard state; it is a context manager as the SDK client is.
Every answer is the SDK's own object. Watching happens on the wire, through public
``httpx2`` streams (:mod:`~tierguard.app.tap`); nothing tierguard does on the side can
raise into the caller or wait on I/O.

``ShadowedAnthropic(api_key=…, …)`` (the SDK's own arguments, no client) builds one
directly.
"""

from __future__ import annotations

import contextvars
import inspect
from functools import cached_property
from typing import TYPE_CHECKING, Any

import anthropic

from tierguard.app.core import Core
from tierguard.app.resources import (
    AsyncShadowedBeta,
    AsyncShadowedMessages,
    ShadowedBeta,
    ShadowedMessages,
    platform_beta,
)
from tierguard.app.tap import Tap
from tierguard.app.transport import AsyncWatchingClient, WatchingClient
from tierguard.config import Settings
from tierguard.policy import Policy

_COPYING: contextvars.ContextVar[Core | None] = contextvars.ContextVar("tierguard_copying", default=None)
_CLASSES: dict[type, type] = {}


def _is_async(kind: type) -> bool:
    """An SDK client class whose ``close`` is a coroutine (AsyncAnthropic, AsyncAnthropicBedrock, …)."""
    return inspect.iscoroutinefunction(getattr(kind, "close", None))


def _watching(http: Any, core: Core, is_async: bool) -> Any:
    """``http`` wrapped for ``core`` (the SDK's default client when ``http`` is None)."""
    if isinstance(http, (WatchingClient, AsyncWatchingClient)):
        if http.tap.core is core:
            return http
        http = http.inner
    if is_async:
        return AsyncWatchingClient(http or anthropic.DefaultAsyncHttpxClient(), Tap(core))
    return WatchingClient(http or anthropic.DefaultHttpxClient(), Tap(core))


class _Shadowing:
    """What makes an SDK client class a wrapper. Not a base class: its attributes are copied into
    a direct subclass of the SDK class (:func:`shadowed_class`), so that a copy of a client can
    become one (a mixin base would change the object's layout); ``_tierguard_base`` is that class."""

    _tierguard_base: type
    tierguard_core: Core
    _tierguard_owner: bool

    def __new__(cls, client: Any = None, *, settings: Settings | None = None,
                policy: Policy | None = None, **options: Any) -> Any:
        if client is None:
            return object.__new__(cls)
        if not hasattr(client, "copy") or not hasattr(client, "_client"):
            raise TypeError(f"ShadowedAnthropic wraps an anthropic SDK client (Anthropic, AsyncAnthropic, "
                            f"AnthropicBedrock, AnthropicVertex, …); got {type(client).__name__}")
        core = Core(settings, policy)
        kind = shadowed_class(type(client))
        token = _COPYING.set(core)  # (a wrapper wrapped again: its copy takes the new state)
        try:
            wrapped = client.copy(http_client=_watching(client._client, core, _is_async(kind)))
        finally:
            _COPYING.reset(token)
        wrapped.__class__ = kind
        wrapped._tierguard_adopt(core, owner=True)
        return wrapped

    def __init__(self, client: Any = None, *, settings: Settings | None = None,
                 policy: Policy | None = None, **options: Any) -> None:
        if client is not None:
            return  # built from ``client`` by __new__
        copying = _COPYING.get()
        core = copying or Core(settings, policy)
        options["http_client"] = _watching(options.get("http_client"), core, _is_async(type(self)))
        self._tierguard_base.__init__(self, **options)
        self._tierguard_adopt(core, owner=copying is None)

    def _tierguard_adopt(self, core: Core, owner: bool) -> None:
        self.tierguard_core = core
        self._tierguard_owner = owner
        self.__dict__.pop("messages", None)  # Bedrock's and Vertex's clients set their own in __init__
        beta = self.__dict__.pop("beta", None)
        if beta is not None:  # theirs (their own resources), its messages taking category=
            self.__dict__["beta"] = platform_beta(beta, _is_async(type(self)))

    def copy(self, *args: Any, **kwargs: Any) -> Any:
        """The SDK's ``copy``/``with_options``: a wrapper sharing this one's tierguard state."""
        token = _COPYING.set(_COPYING.get() or self.tierguard_core)
        try:
            return self._tierguard_base.copy(self, *args, **kwargs)
        finally:
            _COPYING.reset(token)

    with_options = copy

    @cached_property
    def user_agent(self) -> str:
        """The caller's client's own (the SDK names it after the client's class): wrapping changes
        nothing production sends. Read for every request's headers: worked out once."""
        kind = self._tierguard_base
        agent = kind.user_agent.fget(self) if isinstance(kind.user_agent, property) else str(kind.user_agent)
        mine = type(self).__name__ + "/"
        return kind.__name__ + "/" + agent[len(mine):] if agent.startswith(mine) else agent

    def tierguard_stats(self) -> dict[str, int]:
        """Counters: submitted, published, dropped_* and internal errors."""
        return self.tierguard_core.stats()

    def tierguard_flush(self, timeout: float = 5.0) -> bool:
        core = self.tierguard_core
        core.check_fork(start=False)
        return core.publisher.flush(timeout)

    def tierguard_close(self) -> None:
        self.tierguard_core.close()


class _SyncShadowing(_Shadowing):
    @cached_property
    def messages(self) -> ShadowedMessages:
        return ShadowedMessages(self)

    @cached_property
    def beta(self) -> ShadowedBeta:
        return ShadowedBeta(self)  # type: ignore[arg-type]

    def close(self) -> None:
        """Close the HTTP client (the SDK's ``close``); the wrapper that made the tierguard state
        also flushes and stops it."""
        try:
            self._tierguard_base.close(self)  # type: ignore[attr-defined]
        finally:
            if self._tierguard_owner:
                self.tierguard_close()


class _AsyncShadowing(_Shadowing):
    @cached_property
    def messages(self) -> AsyncShadowedMessages:
        return AsyncShadowedMessages(self)

    @cached_property
    def beta(self) -> AsyncShadowedBeta:
        return AsyncShadowedBeta(self)  # type: ignore[arg-type]

    async def close(self) -> None:
        try:
            await self._tierguard_base.close(self)  # type: ignore[attr-defined]
        finally:
            if self._tierguard_owner:
                self.tierguard_close()


def _make(kind: type, name: str, doc: str) -> type:
    """A direct subclass of SDK client class ``kind`` with the wrapper's attributes."""
    mixin = _AsyncShadowing if _is_async(kind) else _SyncShadowing
    namespace: dict[str, Any] = {}
    for part in reversed(mixin.__mro__[:-1]):  # _Shadowing first, object left out
        namespace.update((k, v) for k, v in vars(part).items() if k not in ("__dict__", "__weakref__"))
    namespace.update(_tierguard_base=kind, __module__=__name__, __qualname__=name, __doc__=doc)
    return type(name, (kind,), namespace)


if TYPE_CHECKING:
    from tierguard.app.signatures import AsyncShadowedAnthropic, ShadowedAnthropic
else:
    ShadowedAnthropic = _make(anthropic.Anthropic, "ShadowedAnthropic",
                              "An ``anthropic.Anthropic`` whose messages take ``category=``.")
    AsyncShadowedAnthropic = _make(anthropic.AsyncAnthropic, "AsyncShadowedAnthropic",
                                   "The same for ``anthropic.AsyncAnthropic``.")


def shadowed_class(kind: type) -> type:
    """The wrapper class for SDK client class ``kind`` (made once per class)."""
    if "_tierguard_base" in vars(kind):
        return kind
    if kind is anthropic.Anthropic:
        return ShadowedAnthropic
    if kind is anthropic.AsyncAnthropic:
        return AsyncShadowedAnthropic
    found = _CLASSES.get(kind)
    if found is None:
        found = _CLASSES[kind] = _make(kind, "Shadowed" + kind.__name__,
                                       f"A ``{kind.__name__}`` whose messages take ``category=``.")
    return found
