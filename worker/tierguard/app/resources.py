"""The wrapper's ``messages`` and ``beta.messages``: the SDK's own resources, plus ``category=``.

Each way of making a message — ``create``, ``stream``, ``parse``, ``count_tokens``, and
through the SDK's ``with_raw_response`` / ``with_streaming_response``, which call these
— takes ``category=`` (or a ``metadata.user_id`` of ``tg:CATEGORY:rest``, the prefix
stripped before the request leaves), routes the call's ``model`` from the category's
route, and marks the request with the category header for the client's
:class:`~tierguard.app.tap.Tap`, which counts, samples and watches it on the wire. A
call that names no category is the SDK's own, untouched.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import anthropic
from anthropic.resources.beta import AsyncBeta, Beta
from anthropic.resources.beta.messages import AsyncMessages as AsyncBetaMessages
from anthropic.resources.beta.messages import Messages as BetaMessages
from anthropic.resources.messages import AsyncMessages, Messages

from tierguard.app.core import Core
from tierguard.app.naming import from_user_id
from tierguard.app.plans import Marked
from tierguard.app.tap import MARKED, ROUTED

_PLATFORMS = {"AnthropicBedrock": "bedrock", "AsyncAnthropicBedrock": "bedrock",
              "AnthropicVertex": "vertex", "AsyncAnthropicVertex": "vertex"}


_ITERABLES = ("messages", "system", "tools", "stop_sequences")
_PLAIN = (list, str, tuple, dict)


def platform_of(client: Any) -> str:
    """``bedrock``, ``vertex`` or ``anthropic``: whose model ids and paths a client speaks."""
    for name, platform in _PLATFORMS.items():
        kind = getattr(anthropic, name, None)
        if isinstance(kind, type) and isinstance(client, kind):
            return platform
    return "anthropic"


def named(core: Core, category: str | None, kwargs: dict[str, Any], platform: str = "anthropic"
          ) -> dict[str, Any]:
    """The call's arguments routed and marked for the tap by a header (unchanged when no category
    is named or tierguard declines it: an unknown name past the cap, a refused one). For a request
    sent later than the call (``stream``'s manager) and Bedrock's and Vertex's signed requests."""
    by_user, kwargs = from_user_id(kwargs)
    category = by_user if category is None else category  # category= wins over the user id's prefix
    if category is None:
        return kwargs
    kwargs = _listed(kwargs)
    if platform != "anthropic":
        return _platform_named(core, category, kwargs, platform)
    cat, kwargs = core.route(category, kwargs)
    if cat is None:
        return kwargs
    return _marked(core, category, kwargs, kwargs["model"])


def routed(core: Core, category: str | None, kwargs: dict[str, Any], platform: str = "anthropic",
           strip: bool = False, count: bool = False) -> tuple[dict[str, Any], Marked | None]:
    """:func:`named` for a request the SDK sends within the call: the arguments routed (``kwargs``,
    the call's own, may be changed in place), and the tap's :class:`~tierguard.app.tap.Marked` to
    set while the SDK sends them (None: none to set; a platform's call is marked by its header).
    ``strip``: the client's default headers carry the category header; ``count``: ``count_tokens``."""
    if platform != "anthropic":
        return named(core, category, kwargs, platform), None
    if "metadata" in kwargs:
        by_user, kwargs = from_user_id(kwargs)
        category = by_user if category is None else category
    if category is None:
        return kwargs, None
    kwargs = _listed(kwargs)
    extra = kwargs.get("extra_headers")
    if extra is not None and _names_category(core, extra):  # category= wins over that header
        cat, kwargs = core.route(category, kwargs)
        return (kwargs if cat is None else _marked(core, category, kwargs, kwargs["model"])), None
    plan = core.planned(category, kwargs)
    if plan is not None:  # most calls: the category's plan is all they need
        kwargs["model"] = plan.model
        mark = plan.mark
        return kwargs, (mark._replace(strip=strip, count=count, quick=False) if strip or count else mark)
    cat, kwargs = core.route(category, kwargs)
    if cat is None:
        return kwargs, None
    return kwargs, Marked(core, cat, kwargs["model"], None, strip, count)


def _names_category(core: Core, headers: Any) -> bool:
    name = core.settings.category_header.lower()
    return isinstance(headers, Mapping) and any(str(k).lower() == name for k in headers)


def _listed(kwargs: dict[str, Any]) -> dict[str, Any]:
    """An iterator (a generator) given as a list argument, read into a list: it can be read once,
    and both the routing's size check and the SDK read it."""
    for key in _ITERABLES:
        value = kwargs.get(key)
        if value is not None and type(value) not in _PLAIN and isinstance(value, Iterator):
            kwargs = {**kwargs, key: list(value)}
    return kwargs


def _platform_named(core: Core, category: str, kwargs: dict[str, Any], platform: str) -> dict[str, Any]:
    """:func:`named` for a Bedrock or Vertex client: the platform's id read back to a model (the
    policy's ``model_ids``), the call routed, the routed model's id sent. A call whose id names no
    model tierguard knows goes as it is, counted (``unknown_model_id``)."""
    given = kwargs.get("model")
    model = core.policy.model_name(platform, given) if isinstance(given, str) else None
    if model is None:
        core.check_fork(start=False)
        core.uncategorized("unknown_model_id")
        return kwargs
    cat, routed = core.route(category, {**kwargs, "model": model})
    if cat is None:
        return kwargs
    try:
        routed_id = core.policy.model_id(platform, routed["model"])
    except LookupError as err:  # the routed model has no id there: the caller's own model
        core.refuse("no_model_id", "%s", str(err))
        routed, routed_id = {**routed, "model": model}, given
    return _marked(core, category, {**routed, "model": routed_id}, routed["model"])


def _marked(core: Core, category: str, kwargs: dict[str, Any], model: str) -> dict[str, Any]:
    """The call's arguments with the tap's headers: the category and the model it was routed to."""
    extra, name = kwargs.get("extra_headers"), core.settings.category_header
    headers = {k: v for k, v in extra.items() if k.lower() != name.lower()} if isinstance(extra, Mapping) \
        else {}
    headers[name] = category + ROUTED + model  # category= wins over a header given as well
    return {**kwargs, "extra_headers": headers}


class _Named:
    """``category=`` on each way of making a message (placed before the SDK's resource class)."""

    def __init__(self, client: Any) -> None:
        super().__init__(client)  # type: ignore[call-arg]
        self._core: Core = client.tierguard_core
        self._platform = platform_of(client)
        header = self._core.settings.category_header.lower()
        defaults = getattr(client, "default_headers", None) or {}
        self._strip = any(str(k).lower() == header for k in defaults)
        self._quick = self._platform == "anthropic" and not self._strip  # create's plan path applies

    def _sent(self, send: Any, category: str | None, kwargs: dict[str, Any], count: bool = False) -> Any:
        """``send(**kwargs)`` routed, the tap's mark set while the SDK sends it."""
        kwargs, mark = routed(self._core, category, kwargs, self._platform, self._strip, count)
        if mark is None:
            return send(**kwargs)
        token = MARKED.set(mark)
        try:
            return send(**kwargs)
        finally:
            MARKED.reset(token)

    def create(self, *, category: str | None = None, **kwargs: Any) -> Any:
        if category is None and "metadata" not in kwargs:  # the SDK's own call
            return super().create(**kwargs)  # type: ignore[misc]
        if category is not None and self._quick and "metadata" not in kwargs \
                and "extra_headers" not in kwargs:  # most calls: the category's plan does it all
            plan = self._core._plans.get(category)
            mark = plan.take(kwargs) if plan is not None and plan.take is not None else None
            if mark is not None:
                token = MARKED.set(mark)
                try:
                    return super().create(**kwargs)  # type: ignore[misc]
                finally:
                    MARKED.reset(token)
        return self._sent(super().create, category, kwargs)  # type: ignore[misc]

    def stream(self, *, category: str | None = None, **kwargs: Any) -> Any:
        # The request goes when the manager is entered, after this returns: marked by its header.
        return super().stream(**named(self._core, category, kwargs, self._platform))  # type: ignore[misc]

    def parse(self, *, category: str | None = None, **kwargs: Any) -> Any:
        return self._sent(super().parse, category, kwargs)  # type: ignore[misc]

    def count_tokens(self, *, category: str | None = None, **kwargs: Any) -> Any:
        return self._sent(super().count_tokens, category, kwargs, count=True)  # type: ignore[misc]


class _AsyncNamed(_Named):
    """:class:`_Named` for the async resources (``stream`` is not a coroutine there either)."""

    async def _asent(self, send: Any, category: str | None, kwargs: dict[str, Any],
                     count: bool = False) -> Any:
        kwargs, mark = routed(self._core, category, kwargs, self._platform, self._strip, count)
        if mark is None:
            return await send(**kwargs)
        token = MARKED.set(mark)
        try:
            return await send(**kwargs)
        finally:
            MARKED.reset(token)

    async def create(self, *, category: str | None = None, **kwargs: Any) -> Any:  # type: ignore[override]
        if category is None and "metadata" not in kwargs:  # the SDK's own call
            return await super(_Named, self).create(**kwargs)  # type: ignore[misc]
        if category is not None and self._quick and "metadata" not in kwargs \
                and "extra_headers" not in kwargs:  # as _Named.create
            plan = self._core._plans.get(category)
            mark = plan.take(kwargs) if plan is not None and plan.take is not None else None
            if mark is not None:
                token = MARKED.set(mark)
                try:
                    return await super(_Named, self).create(**kwargs)  # type: ignore[misc]
                finally:
                    MARKED.reset(token)
        return await self._asent(super(_Named, self).create, category, kwargs)  # type: ignore[misc]

    async def parse(self, *, category: str | None = None, **kwargs: Any) -> Any:  # type: ignore[override]
        return await self._asent(super(_Named, self).parse, category, kwargs)  # type: ignore[misc]

    async def count_tokens(self, *, category: str | None = None,  # type: ignore[override]
                           **kwargs: Any) -> Any:
        return await self._asent(super(_Named, self).count_tokens, category, kwargs,  # type: ignore[misc]
                                 count=True)


if TYPE_CHECKING:  # the same classes as mypy sees them: the SDK's signatures, plus ``category``
    from tierguard.app.signatures import (
        AsyncShadowedBeta,
        AsyncShadowedBetaMessages,
        AsyncShadowedMessages,
        ShadowedBeta,
        ShadowedBetaMessages,
        ShadowedMessages,
    )
else:
    class ShadowedMessages(_Named, Messages):
        """``client.messages`` of a wrapped client."""

    class AsyncShadowedMessages(_AsyncNamed, AsyncMessages):
        """``client.messages`` of a wrapped async client."""

    class ShadowedBetaMessages(_Named, BetaMessages):
        """``client.beta.messages`` of a wrapped client."""

    class AsyncShadowedBetaMessages(_AsyncNamed, AsyncBetaMessages):
        """``client.beta.messages`` of a wrapped async client."""

    class ShadowedBeta(Beta):
        """``client.beta`` of a wrapped client: its ``messages`` take ``category=``."""

        @property
        def messages(self) -> ShadowedBetaMessages:  # type: ignore[override]
            return _cached(self, "_tierguard_messages", ShadowedBetaMessages)

    class AsyncShadowedBeta(AsyncBeta):
        """``client.beta`` of a wrapped async client."""

        @property
        def messages(self) -> AsyncShadowedBetaMessages:  # type: ignore[override]
            return _cached(self, "_tierguard_messages", AsyncShadowedBetaMessages)


def _cached(beta: Any, name: str, kind: type) -> Any:
    found = beta.__dict__.get(name)
    if found is None:
        found = beta.__dict__[name] = kind(beta._client)
    return found


_BETAS: dict[type, type] = {}


def platform_beta(beta: Any, is_async: bool) -> Any:
    """A Bedrock or Vertex client's own ``beta`` (its own resources), made an instance of a subclass
    of its class whose ``messages`` take ``category=``."""
    kind = type(beta)
    found = _BETAS.get(kind)
    if found is None:
        messages = AsyncShadowedBetaMessages if is_async else ShadowedBetaMessages
        found = _BETAS[kind] = type("Shadowed" + kind.__name__, (kind,), {
            "messages": property(lambda self: _cached(self, "_tierguard_messages", messages)),
            "__module__": __name__})
    beta.__class__ = found
    return beta
