"""The worker's model client on Bedrock or Vertex AI (``TIERGUARD_SHADOW_PLATFORM``).

With ``bedrock`` or ``vertex`` every call a worker makes — shadows, noise twins, ladder
probes, judges — goes through the anthropic SDK's ``AsyncAnthropicBedrock`` /
``AsyncAnthropicVertex``, which read their own settings as they always do: the AWS credential
chain (``AWS_ACCESS_KEY_ID``…, a profile, an instance role; or ``AWS_BEARER_TOKEN_BEDROCK``)
and ``AWS_REGION``; Google's Application Default Credentials, ``CLOUD_ML_REGION`` and
``ANTHROPIC_VERTEX_PROJECT_ID``; ``ANTHROPIC_BEDROCK_BASE_URL`` / ``ANTHROPIC_VERTEX_BASE_URL``.
Jobs name models as tierguard does; :func:`sent_model` gives the platform's id from the
running policy's ``model_ids`` (a model without one fails its job as ``no_model_id``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anthropic

from tierguard.policy import Policy

_CLIENTS: dict[str, Any] = {"bedrock": anthropic.AsyncAnthropicBedrock,
                            "vertex": anthropic.AsyncAnthropicVertex}


def platform_client(platform: str, policy: Callable[[], Policy], **options: Any) -> Any:
    """An async SDK client for ``platform`` (``options``: timeout, retries, http_client) that
    knows the platform's ids of tierguard's models from ``policy()`` (read at each call)."""
    client = _CLIENTS[platform](**options)
    client.tierguard_platform = platform
    client.tierguard_model_id = lambda model: policy().model_id(platform, model)
    return client


def platform_of(client: Any) -> str:
    """``anthropic``, ``bedrock`` or ``vertex``: where ``client`` sends its calls."""
    return getattr(client, "tierguard_platform", "anthropic")


def sent_model(client: Any, model: str) -> str:
    """The id ``client``'s platform knows ``model`` by (LookupError naming the policy field)."""
    ids = getattr(client, "tierguard_model_id", None)
    return model if ids is None else ids(model)
