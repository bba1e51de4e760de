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
from tierguard.app.tap import ROUTED

_PLATFORMS = {"AnthropicBedrock": "bedrock", "AsyncAnthropicBedrock": "bedrock",
              "AnthropicVertex": "vertex", "AsyncAnthropicVertex": "vertex"}


_ITERABLES = ("messages", "system", "tools", "stop_sequences")


def platform_of(client: Any) -> str:
    """``bedrock``, ``vertex`` or ``anthropic``: whose model ids and paths a client speaks."""
    for name, platform in _PLATFORMS.items():
        kind = getattr(anthropic, name, None)
        if isinstance(kind, type) and isinstance(client, kind):
            return platform
    return "anthropic"


def named(core: Core, category: str | None, kwargs: dict[str, Any], platform: str = "anthropic"
          ) -> dict[str, Any]:
    """The call's arguments routed and marked for the tap (unchanged when no category is named or
    tierguard declines it: an unknown name past the cap, a refused one)."""
    by_user, kwargs = from_user_id(kwargs)
    category = by_user if category is None else category  # category= wins over the user id's prefix
    if category is None:
        return kwargs
    for key in _ITERABLES:  # an iterator (a generator) can be read once: read here, for both
        if isinstance(kwargs.get(key), Iterator):
            kwargs = {**kwargs, key: list(kwargs[key])}
    if platform != "anthropic":
        return _platform_named(core, category, kwargs, platform)
    cat, kwargs = core.route(category, kwargs)
    if cat is None:
        return kwargs
    return _marked(core, category, kwargs, kwargs["model"])


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

    def create(self, *, category: str | None = None, **kwargs: Any) -> Any:
        return super().create(**named(self._core, category, kwargs, self._platform))  # type: ignore[misc]

    def stream(self, *, category: str | None = None, **kwargs: Any) -> Any:
        return super().stream(**named(self._core, category, kwargs, self._platform))  # type: ignore[misc]

    def parse(self, *, category: str | None = None, **kwargs: Any) -> Any:
        return super().parse(**named(self._core, category, kwargs, self._platform))  # type: ignore[misc]

    def count_tokens(self, *, category: str | None = None, **kwargs: Any) -> Any:
        return super().count_tokens(**named(self._core, category, kwargs, self._platform))  # type: ignore[misc]


class _AsyncNamed(_Named):
    """:class:`_Named` for the async resources (``stream`` is not a coroutine there either)."""

    async def create(self, *, category: str | None = None, **kwargs: Any) -> Any:  # type: ignore[override]
        return await super(_Named, self).create(**named(self._core, category, kwargs, self._platform))  # type: ignore[misc]

    async def parse(self, *, category: str | None = None, **kwargs: Any) -> Any:  # type: ignore[override]
        return await super(_Named, self).parse(**named(self._core, category, kwargs, self._platform))  # type: ignore[misc]

    async def count_tokens(self, *, category: str | None = None,  # type: ignore[override]
                           **kwargs: Any) -> Any:
        return await super(_Named, self).count_tokens(  # type: ignore[misc]
            **named(self._core, category, kwargs, self._platform))


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
