"""The simulator as Amazon Bedrock and Google Vertex AI speak Claude's Messages API.

- Bedrock: ``POST /model/{id}/invoke`` answers the message as JSON;
  ``/invoke-with-response-stream`` answers AWS event-stream frames
  (``application/vnd.amazon.eventstream``, each event as ``{"bytes": base64(JSON)}``).
  A SigV4 ``authorization`` header (or a Bedrock API key as a bearer token) is accepted,
  never verified.
- Vertex: ``POST /v1/projects/{p}/locations/{r}/publishers/anthropic/models/{id}:rawPredict``
  answers JSON, ``:streamRawPredict`` server-sent events as the Messages API streams. A bearer
  token is accepted, never verified; ``POST /_sim/oauth/token`` hands one out (what Google's
  credentials refresh against: point a service-account key file's ``token_uri`` there).

The model in the path is answered as the model its id spells (``us.anthropic.claude-opus-4-7``
answers as ``claude-opus-4-7``: a reference when the scenario says so); the request is
logged with its path (``GET /_sim/requests``), so tests see which id a call named.
"""

from __future__ import annotations

import json
import re
from typing import Any, NamedTuple
from urllib.parse import unquote

from tierguard.contract.eventstream import CONTENT_TYPE, encode_event

TOKEN_PATH = "/_sim/oauth/token"
_PATH = re.compile(r"^(?:/model/(?P<bedrock>[^/]+)/invoke(?P<bstream>-with-response-stream)?"
                   r"|(?:/v1)?/projects/[^/]+/locations/[^/]+/publishers/anthropic/models/"
                   r"(?P<vertex>[^/]+):(?P<vstream>stream)?[rR]awPredict)$")
_BEDROCK_ID = re.compile(r"^(?:arn:[^/]*/)?(?:[a-z]{2,6}(?:-[a-z]+)?\.)?anthropic\.(?P<name>.+?)"
                         r"(?:-\d{8})?(?:-v\d+(?::\d+)?)?$")


class PlatformCall(NamedTuple):
    platform: str  # bedrock | vertex
    model_id: str  # as the path names it, decoded
    streamed: bool
    body: Any  # the request as a Messages API body (model from the path)


def model_of(platform: str, model_id: str) -> str:
    """The model a platform id spells (an id it cannot read: the id itself)."""
    if platform == "vertex":
        return model_id.partition("@")[0]
    found = _BEDROCK_ID.match(model_id)
    return found["name"] if found else model_id


def platform_call(path: str, body: Any) -> PlatformCall | None:
    """A Bedrock or Vertex Messages call, or None for any other path."""
    found = _PATH.match(path)
    if found is None or found["vertex"] == "count-tokens":
        return None
    platform = "bedrock" if found["bedrock"] else "vertex"
    model_id = unquote(found[platform])
    streamed = bool(found["bstream"] or found["vstream"])
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if k not in ("anthropic_version", "anthropic_beta")}
        body = {**body, "model": model_of(platform, model_id), **({"stream": True} if streamed else {})}
    return PlatformCall(platform, model_id, streamed, body)


def _block_events(index: int, block: dict[str, Any]) -> list[dict[str, Any]]:
    """One content block streamed: its start, its deltas (16 characters each), its stop."""
    if block.get("type") == "tool_use":
        raw = json.dumps(block.get("input") or {})
        start: dict[str, Any] = {**block, "input": {}}
        deltas = [{"type": "input_json_delta", "partial_json": raw[i:i + 16]} for i in range(0, len(raw), 16)]
    else:
        text = block.get("text", "")
        start = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": text[i:i + 16]} for i in range(0, len(text), 16)]
    return ([{"type": "content_block_start", "index": index, "content_block": start}]
            + [{"type": "content_block_delta", "index": index, "delta": d} for d in deltas]
            + [{"type": "content_block_stop", "index": index}])


def sse_events(msg: dict[str, Any]) -> list[dict[str, Any]]:
    """The Messages API's stream events for ``msg`` (no content: no block events; its stop reason
    in ``message_delta``)."""
    start = dict(msg, content=[], stop_reason=None,
                 usage={"input_tokens": msg["usage"]["input_tokens"], "output_tokens": 1})
    events: list[dict[str, Any]] = [{"type": "message_start", "message": start}]
    for i, block in enumerate(msg["content"]):
        events += _block_events(i, block)
    return events + [{"type": "message_delta",
                      "delta": {"stop_reason": msg["stop_reason"], "stop_sequence": None},
                      "usage": {"output_tokens": msg["usage"]["output_tokens"]}},
                     {"type": "message_stop"}]


def encoded_stream(msg: dict[str, Any], call: PlatformCall | None) -> tuple[str, list[bytes]]:
    """(content type, the stream's pieces) for ``msg``: Bedrock's as event-stream frames, every
    other as server-sent events."""
    events = sse_events(msg)
    if call is not None and call.platform == "bedrock":
        return CONTENT_TYPE, [encode_event(e) for e in events]
    return "text/event-stream", [f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events]


def oauth_token() -> dict[str, Any]:
    """An access token, as Google's OAuth token endpoint answers a refresh."""
    return {"access_token": "ya29.simulated", "expires_in": 3600, "token_type": "Bearer",
            "scope": "https://www.googleapis.com/auth/cloud-platform"}
