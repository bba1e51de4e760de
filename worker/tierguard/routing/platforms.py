"""Claude on Amazon Bedrock and Google Vertex AI: their paths and bodies as Messages API calls (pure).

The anthropic SDK's ``AnthropicBedrock`` and ``AnthropicVertex`` send a Messages request with
the model in the path and the rest in the body:

- Bedrock: ``POST /model/{id}/invoke`` (``/invoke-with-response-stream`` when streamed; the
  answer is then AWS event-stream frames, :mod:`tierguard.contract.eventstream`). The id is
  percent-encoded but for ``:`` and ``;``. The body has no ``model`` and no ``stream``; it has
  ``anthropic_version`` and, for betas, an ``anthropic_beta`` list.
- Vertex: ``POST /v1/projects/{p}/locations/{r}/publishers/anthropic/models/{id}:rawPredict``
  (``:streamRawPredict`` when streamed; server-sent events as the Messages API's). The body
  keeps ``stream``, has ``anthropic_version``, no ``model``.

:func:`invoke_path` reads such a path, :func:`with_model_id` names another model in it,
:func:`messages_body` turns a platform body into a Messages API body and
:func:`platform_body` the reverse. Model ids: :mod:`tierguard.policy.platform_ids`.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple
from urllib.parse import quote, unquote

from tierguard.contract.eventstream import EventStreamParser, encode_event, encode_exception
from tierguard.policy.platform_ids import DEFAULT_MODEL_IDS, PLATFORMS

__all__ = ["DEFAULT_MODEL_IDS", "PLATFORMS", "EventStreamParser", "Invoke", "encode_event",
           "encode_exception", "invoke_path", "messages_body", "platform_body", "with_model_id"]

# The anthropic_version each platform documents (the SDK sends its own when it builds the body).
VERSIONS = {"bedrock": "bedrock-2023-05-31", "vertex": "vertex-2023-10-16"}
_BEDROCK = re.compile(r"^(?P<base>/model/)(?P<id>[^/]+)(?P<op>/invoke(?:-with-response-stream)?)$")
_VERTEX = re.compile(r"^(?P<base>(?:/v1(?:beta1)?)?/projects/[^/]+/locations/[^/]+/publishers/anthropic/"
                     r"models/)(?P<id>[^/]+):(?P<op>rawPredict|streamRawPredict)$")
_NOT_MESSAGES = {"count-tokens"}  # Vertex's token counting is a rawPredict path too


class Invoke(NamedTuple):
    """A platform path read: whose it is, the model id it names (decoded), whether it streams."""

    platform: str
    model_id: str
    streamed: bool


def invoke_path(path: str) -> Invoke | None:
    """The Bedrock or Vertex Messages call ``path`` is (no query string), else None."""
    if found := _BEDROCK.match(path):
        return Invoke("bedrock", unquote(found["id"]), found["op"].endswith("stream"))
    if (found := _VERTEX.match(path)) and unquote(found["id"]) not in _NOT_MESSAGES:
        return Invoke("vertex", unquote(found["id"]), found["op"] == "streamRawPredict")
    return None


def encode_id(platform: str, model_id: str) -> str:
    """``model_id`` as the SDK puts it in a path."""
    if platform == "bedrock":
        return quote(model_id, safe=":;")
    return quote(model_id, safe="!$&'()*+,=:@")  # the SDK's path segment, ';' encoded too


def with_model_id(path: str, model_id: str) -> str:
    """``path`` (a Bedrock or Vertex Messages path) naming ``model_id`` instead; ValueError if it
    is neither."""
    for platform, pattern in (("bedrock", _BEDROCK), ("vertex", _VERTEX)):
        if found := pattern.match(path):
            sep = ":" if platform == "vertex" else ""
            return found["base"] + encode_id(platform, model_id) + sep + found["op"]
    raise ValueError(f"{path!r} is not a Bedrock or Vertex Messages path")


def messages_body(platform: str, body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """(a Messages API body, its ``anthropic-beta`` header if any) for a platform request body:
    ``model`` left out, ``anthropic_version`` dropped, Bedrock's ``anthropic_beta`` as the header."""
    out = {k: v for k, v in body.items() if k not in ("model", "anthropic_version", "anthropic_beta")}
    headers: dict[str, str] = {}
    betas = body.get("anthropic_beta") if platform == "bedrock" else None
    if isinstance(betas, str):
        betas = [b for b in betas.split(",") if b.strip()]
    if betas:
        headers["anthropic-beta"] = ",".join(str(b).strip() for b in betas)
    return out, headers


def platform_body(platform: str, body: dict[str, Any], headers: dict[str, str] | None = None
                  ) -> dict[str, Any]:
    """What goes to ``platform`` for a Messages API ``body`` (and its ``anthropic-beta`` header):
    ``model`` in the path instead, Bedrock's ``stream`` in the path too."""
    if platform not in VERSIONS:
        raise ValueError(f"platform: {platform!r} is not one of {', '.join(VERSIONS)}")
    drop = ("model", "stream") if platform == "bedrock" else ("model",)
    out = {k: v for k, v in body.items() if k not in drop}
    out.setdefault("anthropic_version", VERSIONS[platform])
    beta = {k.lower(): v for k, v in (headers or {}).items()}.get("anthropic-beta")
    if platform == "bedrock" and beta:
        out.setdefault("anthropic_beta", [b.strip() for b in beta.split(",") if b.strip()])
    return out
