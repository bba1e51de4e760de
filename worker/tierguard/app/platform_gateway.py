"""The gateway as Bedrock's or Vertex AI's endpoint: their Messages paths routed and watched.

An ``AnthropicBedrock`` / ``AnthropicVertex`` client (or any caller of those paths) whose base URL
is the gateway sends ``POST /model/{id}/invoke[-with-response-stream]`` or
``…/publishers/anthropic/models/{id}:[stream]rawPredict`` with the category header (or a
``/c/CATEGORY/`` base URL). :func:`route_platform_call` reads the id back to a model
(``Policy.model_name``), routes the call as a Messages API call of that model and names the
routed model's id in the path; the body goes upstream untouched, and so do the caller's
credentials (see the README: a SigV4 signature covers the host and the path). The job a
sampled call becomes carries the Messages API body (:func:`~tierguard.routing.platforms.messages_body`:
no ``anthropic_version``; Bedrock's ``anthropic_beta`` as the ``anthropic-beta`` header).
A call whose id names no model the policy knows, or whose body cannot be read, is relayed as
sent and counted (``uncategorized_unknown_model_id``, ``uncategorized_unreadable_body``).
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from tierguard.app.core import Core
from tierguard.app.relay import caller_key
from tierguard.policy import CategoryPolicy
from tierguard.routing.platforms import Invoke, invoke_path, messages_body, with_model_id

__all__ = ["PlatformRoute", "invoke_path", "route_platform_call"]


class PlatformRoute(NamedTuple):
    """A routed platform call: its category, the Messages request as routed, the target and headers
    to send, the job's shaping headers (its betas), whether a stream comes as event-stream frames."""

    cat: CategoryPolicy
    routed: dict[str, Any]
    target: str
    headers: list[tuple[bytes, bytes]]
    job_headers: dict[str, str] | None
    frames: bool


def route_platform_call(core: Core, invoke: Invoke, category: str | None, target: str,
                        headers: list[tuple[bytes, bytes]], body: bytes) -> PlatformRoute | None:
    """The routed call, or None to relay it as sent (counted)."""
    if not category:
        core.uncategorized()
        return None
    if core.tenant_refuses(category, caller_key(headers)):
        return None
    request = _request(core, invoke, body)
    if request is None:
        return None
    cat, routed = core.route(category, request[0])
    if cat is None:
        return None
    path, query = target.partition("?")[::2]
    if (model := routed.get("model")) != request[0]["model"]:
        try:
            path = with_model_id(path, core.policy.model_id(invoke.platform, model))
        except LookupError as err:  # the routed model has no id on this platform: served as sent
            core.refuse("no_model_id", "%s", str(err))
            routed = {**routed, "model": request[0]["model"]}
    # Its answer is read on the side (usage; the whole answer when sampled): asked for uncompressed.
    headers = [h for h in headers if h[0] != b"accept-encoding"] + [(b"accept-encoding", b"identity")]
    return PlatformRoute(cat, routed, path + (f"?{query}" if query else ""), headers, request[1] or None,
                         invoke.platform == "bedrock")


def _request(core: Core, invoke: Invoke, body: bytes) -> tuple[dict[str, Any], dict[str, str]] | None:
    """(the call as a Messages API request of the model its id names, its beta header), or None."""
    try:
        sent = json.loads(body)
    except (ValueError, RecursionError):
        sent = None
    if not isinstance(sent, dict):
        core.uncategorized("unreadable_body")
        return None
    name = core.policy.model_name(invoke.platform, invoke.model_id)
    if name is None:
        core.uncategorized("unknown_model_id")
        return None
    request, betas = messages_body(invoke.platform, sent)
    return {**request, "model": name, **({"stream": True} if invoke.streamed else {})}, betas
