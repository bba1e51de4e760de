"""The wrapper's public signatures, as type checkers see them: the SDK's own, plus ``category``.

Read only by type checkers (``tierguard.app.client`` and ``resources`` import it under
``TYPE_CHECKING``; at run time the classes are theirs). Arguments are the SDK's request
TypedDicts, so a misspelled argument is an error and each call's return type is the
SDK's: ``Message`` or ``Stream`` by ``stream=``, the SDK's stream manager, its
``MessageTokensCount``, and its raw and streamed response objects.
"""

from __future__ import annotations

from typing import Any, TypedDict, overload

import anthropic
import httpx2
from anthropic import AsyncStream, NotGiven, Stream
from anthropic._legacy_response import LegacyAPIResponse
from anthropic._response import (
    APIResponse,
    APIResponseContextManager,
    AsyncAPIResponse,
    AsyncAPIResponseContextManager,
)
from anthropic.lib.streaming import AsyncMessageStreamManager, MessageStreamManager
from anthropic.resources.beta import AsyncBeta, Beta
from anthropic.resources.beta.messages import AsyncMessages as AsyncBetaMessages
from anthropic.resources.beta.messages import Messages as BetaMessages
from anthropic.resources.messages import AsyncMessages, Messages
from anthropic.types import Message, MessageTokensCount, RawMessageStreamEvent
from anthropic.types import message_count_tokens_params as count_params
from anthropic.types import message_create_params as create_params
from anthropic.types.beta import BetaMessage, BetaMessageTokensCount, BetaRawMessageStreamEvent
from anthropic.types.beta import message_count_tokens_params as beta_count_params
from anthropic.types.beta import message_create_params as beta_params
from typing_extensions import Unpack

from tierguard.app.core import Core
from tierguard.config import Settings
from tierguard.policy import Policy


class Options(TypedDict, total=False):
    """The SDK's per-call request options."""

    extra_headers: dict[str, str] | None
    extra_query: dict[str, object] | None
    extra_body: object | None
    timeout: float | httpx2.Timeout | None | NotGiven


class Create(create_params.MessageCreateParamsNonStreaming, Options, total=False):
    pass


class CreateStreaming(create_params.MessageCreateParamsStreaming, Options, total=False):
    pass


class StreamArgs(create_params.MessageCreateParamsBase, Options, total=False):
    pass


class Count(count_params.MessageCountTokensParams, Options, total=False):
    pass


class BetaCreate(beta_params.MessageCreateParamsNonStreaming, Options, total=False):
    pass


class BetaCreateStreaming(beta_params.MessageCreateParamsStreaming, Options, total=False):
    pass


class BetaStreamArgs(beta_params.MessageCreateParamsBase, Options, total=False):
    pass


class BetaCount(beta_count_params.MessageCountTokensParams, Options, total=False):
    pass


class RawMessages:
    def create(self, *, category: str | None = None,
               **kwargs: Unpack[Create]) -> LegacyAPIResponse[Message]: ...
    def count_tokens(self, *, category: str | None = None,
                     **kwargs: Unpack[Count]) -> LegacyAPIResponse[MessageTokensCount]: ...


class StreamedMessages:
    def create(self, *, category: str | None = None,
               **kwargs: Unpack[Create]) -> APIResponseContextManager[APIResponse[Message]]: ...


class AsyncRawMessages:
    async def create(self, *, category: str | None = None,
                     **kwargs: Unpack[Create]) -> LegacyAPIResponse[Message]: ...


class AsyncStreamedMessages:
    def create(self, *, category: str | None = None,
               **kwargs: Unpack[Create]) -> AsyncAPIResponseContextManager[AsyncAPIResponse[Message]]: ...


class ShadowedMessages(Messages):
    @overload  # type: ignore[override]
    def create(self, *, category: str | None = None, **kwargs: Unpack[Create]) -> Message: ...
    @overload
    def create(self, *, category: str | None = None,
               **kwargs: Unpack[CreateStreaming]) -> Stream[RawMessageStreamEvent]: ...
    def create(self, *, category: str | None = None, **kwargs: Any) -> Any: ...
    def stream(self, *, category: str | None = None,  # type: ignore[override]
               **kwargs: Unpack[StreamArgs]) -> MessageStreamManager[Any]: ...
    def count_tokens(self, *, category: str | None = None,  # type: ignore[override]
                     **kwargs: Unpack[Count]) -> MessageTokensCount: ...
    @property
    def with_raw_response(self) -> RawMessages: ...  # type: ignore[override]
    @property
    def with_streaming_response(self) -> StreamedMessages: ...  # type: ignore[override]


class AsyncShadowedMessages(AsyncMessages):
    @overload  # type: ignore[override]
    async def create(self, *, category: str | None = None, **kwargs: Unpack[Create]) -> Message: ...
    @overload
    async def create(self, *, category: str | None = None,
                     **kwargs: Unpack[CreateStreaming]) -> AsyncStream[RawMessageStreamEvent]: ...
    async def create(self, *, category: str | None = None, **kwargs: Any) -> Any: ...
    def stream(self, *, category: str | None = None,  # type: ignore[override]
               **kwargs: Unpack[StreamArgs]) -> AsyncMessageStreamManager[Any]: ...
    async def count_tokens(self, *, category: str | None = None,  # type: ignore[override]
                           **kwargs: Unpack[Count]) -> MessageTokensCount: ...
    @property
    def with_raw_response(self) -> AsyncRawMessages: ...  # type: ignore[override]
    @property
    def with_streaming_response(self) -> AsyncStreamedMessages: ...  # type: ignore[override]


class ShadowedBetaMessages(BetaMessages):
    @overload  # type: ignore[override]
    def create(self, *, category: str | None = None, **kwargs: Unpack[BetaCreate]) -> BetaMessage: ...
    @overload
    def create(self, *, category: str | None = None,
               **kwargs: Unpack[BetaCreateStreaming]) -> Stream[BetaRawMessageStreamEvent]: ...
    def create(self, *, category: str | None = None, **kwargs: Any) -> Any: ...
    def stream(self, *, category: str | None = None,  # type: ignore[override]
               **kwargs: Unpack[BetaStreamArgs]) -> Any: ...
    def count_tokens(self, *, category: str | None = None,  # type: ignore[override]
                     **kwargs: Unpack[BetaCount]) -> BetaMessageTokensCount: ...


class AsyncShadowedBetaMessages(AsyncBetaMessages):
    @overload  # type: ignore[override]
    async def create(self, *, category: str | None = None, **kwargs: Unpack[BetaCreate]) -> BetaMessage: ...
    @overload
    async def create(self, *, category: str | None = None,
                     **kwargs: Unpack[BetaCreateStreaming]) -> AsyncStream[BetaRawMessageStreamEvent]: ...
    async def create(self, *, category: str | None = None, **kwargs: Any) -> Any: ...
    def stream(self, *, category: str | None = None,  # type: ignore[override]
               **kwargs: Unpack[BetaStreamArgs]) -> Any: ...
    async def count_tokens(self, *, category: str | None = None,  # type: ignore[override]
                           **kwargs: Unpack[BetaCount]) -> BetaMessageTokensCount: ...


class ShadowedBeta(Beta):
    @property
    def messages(self) -> ShadowedBetaMessages: ...  # type: ignore[override]


class AsyncShadowedBeta(AsyncBeta):
    @property
    def messages(self) -> AsyncShadowedBetaMessages: ...  # type: ignore[override]


class _Tierguard:
    tierguard_core: Core

    def tierguard_stats(self) -> dict[str, int]: ...
    def tierguard_flush(self, timeout: float = 5.0) -> bool: ...
    def tierguard_close(self) -> None: ...


class ShadowedAnthropic(_Tierguard, anthropic.Anthropic):
    def __init__(self, client: anthropic.Anthropic | None = None, *, settings: Settings | None = None,
                 policy: Policy | None = None, **options: Any) -> None: ...
    @property
    def messages(self) -> ShadowedMessages: ...  # type: ignore[override]
    @property
    def beta(self) -> ShadowedBeta: ...  # type: ignore[override]


class AsyncShadowedAnthropic(_Tierguard, anthropic.AsyncAnthropic):
    def __init__(self, client: anthropic.AsyncAnthropic | None = None, *,
                 settings: Settings | None = None, policy: Policy | None = None, **options: Any) -> None: ...
    @property
    def messages(self) -> AsyncShadowedMessages: ...  # type: ignore[override]
    @property
    def beta(self) -> AsyncShadowedBeta: ...  # type: ignore[override]
