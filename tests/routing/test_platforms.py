"""Bedrock's and Vertex's paths and bodies, model ids both ways, and the event-stream codec."""

from __future__ import annotations

import base64
import json
import struct

import anthropic
import httpx2
import pytest

from tierguard.contract.eventstream import EventStreamParser, encode_event, encode_exception, encode_frame
from tierguard.policy.platform_ids import DEFAULT_MODEL_IDS, bare, canonical, model_name_of
from tierguard.routing.platforms import (
    PLATFORMS,
    Invoke,
    invoke_path,
    messages_body,
    platform_body,
    with_model_id,
)

MESSAGE = {"id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": [],
           "stop_reason": "end_turn", "stop_sequence": None, "usage": {"input_tokens": 1, "output_tokens": 1}}


def sdk_requests(make: type, **kw: object) -> list[httpx2.Request]:
    """The requests a real platform client of the SDK sends (a mock transport answers)."""
    seen: list[httpx2.Request] = []

    def answer(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return httpx2.Response(200, json=MESSAGE)

    client = make(http_client=httpx2.Client(transport=httpx2.MockTransport(answer)), **kw)
    for model in ("global.anthropic.claude-haiku-4-5-20251001-v1:0", "arn:aws:bedrock:us-east-1:1:x/y",
                  "claude-haiku-4-5@20251001"):
        client.messages.create(model=model, max_tokens=5, messages=[{"role": "user", "content": "hi"}],
                               extra_headers={"anthropic-beta": "b1,b2"})
    return seen


def test_paths_the_sdk_sends_read_back() -> None:
    bedrock = sdk_requests(anthropic.AnthropicBedrock, aws_access_key="AKID", aws_secret_key="s",
                           aws_region="us-east-1")
    vertex = sdk_requests(anthropic.AnthropicVertex, region="us-east5", project_id="p", access_token="t")
    got = [invoke_path(r.url.raw_path.decode()) for r in bedrock + vertex]
    assert got == [Invoke("bedrock", "global.anthropic.claude-haiku-4-5-20251001-v1:0", False),
                   Invoke("bedrock", "arn:aws:bedrock:us-east-1:1:x/y", False),
                   Invoke("bedrock", "claude-haiku-4-5@20251001", False),
                   Invoke("vertex", "global.anthropic.claude-haiku-4-5-20251001-v1:0", False),
                   Invoke("vertex", "arn:aws:bedrock:us-east-1:1:x/y", False),
                   Invoke("vertex", "claude-haiku-4-5@20251001", False)]
    # with_model_id encodes as the SDK does: the SDK's own path for the id comes back.
    for request in bedrock + vertex:
        path = request.url.raw_path.decode()
        invoke = invoke_path(path)
        assert invoke is not None and with_model_id(path, invoke.model_id) == path
    body = json.loads(bedrock[0].content)
    hi = [{"role": "user", "content": "hi"}]
    assert messages_body("bedrock", body) == ({"max_tokens": 5, "messages": hi}, {"anthropic-beta": "b1,b2"})
    assert messages_body("vertex", json.loads(vertex[0].content))[0] == {
        "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}


def test_streamed_paths_and_other_paths() -> None:
    assert invoke_path("/model/anthropic.claude-opus-4-7/invoke-with-response-stream") == Invoke(
        "bedrock", "anthropic.claude-opus-4-7", True)
    vertex = "/v1/projects/p/locations/global/publishers/anthropic/models/claude-opus-4-7:streamRawPredict"
    assert invoke_path(vertex) == Invoke("vertex", "claude-opus-4-7", True)
    assert invoke_path(vertex.removeprefix("/v1")) == Invoke("vertex", "claude-opus-4-7", True)
    assert with_model_id(vertex, "claude-haiku-4-5@20251001").endswith(
        "/models/claude-haiku-4-5@20251001:streamRawPredict")
    for other in ("/v1/messages", "/model/x/converse", "/model//invoke",
                  "/v1/projects/p/locations/r/publishers/anthropic/models/count-tokens:rawPredict",
                  "/v1/projects/p/locations/r/publishers/google/models/gemini:rawPredict"):
        assert invoke_path(other) is None
    with pytest.raises(ValueError, match="not a Bedrock or Vertex"):
        with_model_id("/v1/messages", "x")
    assert with_model_id("/model/a/invoke", "arn:aws:bedrock:r:1:inference-profile/us.x") == \
        "/model/arn:aws:bedrock:r:1:inference-profile%2Fus.x/invoke"


def test_bodies_both_ways() -> None:
    body = {"model": "claude-haiku-4-5", "max_tokens": 9, "stream": True, "messages": [{"role": "user",
                                                                                     "content": "x"}]}
    sent = platform_body("bedrock", body, {"Anthropic-Beta": "a, b"})
    assert sent == {"max_tokens": 9, "messages": body["messages"], "anthropic_version": "bedrock-2023-05-31",
                    "anthropic_beta": ["a", "b"]}
    assert messages_body("bedrock", sent) == ({"max_tokens": 9, "messages": body["messages"]},
                                              {"anthropic-beta": "a,b"})
    vertex = platform_body("vertex", body)
    assert vertex["stream"] is True and "model" not in vertex
    assert vertex["anthropic_version"] == "vertex-2023-10-16"
    assert messages_body("vertex", {**vertex, "anthropic_beta": ["x"]}) == (
        {"max_tokens": 9, "stream": True, "messages": body["messages"]}, {})
    with pytest.raises(ValueError, match="platform"):
        platform_body("azure", body)
    assert PLATFORMS == ("anthropic", "bedrock", "vertex")


def test_model_ids_read_back() -> None:
    ids = DEFAULT_MODEL_IDS["bedrock"]
    known = ["claude-haiku-4-5", "claude-opus-4-7", "claude-sonnet-4-6"]
    haiku = "anthropic.claude-haiku-4-5-20251001-v1:0"
    for given in (f"global.{haiku}", f"us.{haiku}", f"eu.{haiku}", haiku,
                  f"arn:aws:bedrock:us-east-1:123:inference-profile/apac.{haiku}"):
        assert model_name_of("bedrock", given, ids, known) == "claude-haiku-4-5", given
    assert model_name_of("bedrock", "us-gov.anthropic.claude-opus-4-7", ids, known) == "claude-opus-4-7"
    assert model_name_of("bedrock", "meta.llama3", ids, known) is None
    assert model_name_of("bedrock", "arn:aws:bedrock:us-east-1:123:application-inference-profile/abc", ids,
                      known) is None
    vertex = DEFAULT_MODEL_IDS["vertex"]
    assert model_name_of("vertex", "claude-haiku-4-5", vertex, known) == "claude-haiku-4-5"
    assert model_name_of("vertex", "claude-haiku-4-5@20251001", vertex, known) == "claude-haiku-4-5"
    assert model_name_of("vertex", "claude-haiku-4-5@20990101", {}, known) == "claude-haiku-4-5"
    assert canonical("bedrock", "anthropic.claude-sonnet-4-5-20250929-v1:0") == "claude-sonnet-4-5"
    assert bare("bedrock", "global.anthropic.claude-opus-4-7") == "anthropic.claude-opus-4-7"
    assert set(DEFAULT_MODEL_IDS["bedrock"]) == set(DEFAULT_MODEL_IDS["vertex"]) >= set(known)


EVENTS = [{"type": "message_start", "message": {**MESSAGE, "content": []}},
          {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
          {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "héllo"}},
          {"type": "message_stop"}]


def test_codec_round_trip_in_any_chunking() -> None:
    data = b"".join(encode_event(e) for e in EVENTS) + encode_exception("throttlingException", "slow down")
    want = EVENTS + [{"type": "error", "error": {"type": "throttlingException", "message": "slow down"}}]
    for size in (1, 7, 13, len(data)):
        parser = EventStreamParser()
        got = [e for i in range(0, len(data), size) for e in parser.feed(data[i:i + size])]
        assert got == want and not parser.overflow
    only = EventStreamParser(only=frozenset({b"message_stop"}))
    assert only.feed(data) == [EVENTS[-1]]


def test_the_sdks_own_decoder_reads_the_frames() -> None:
    """The frames are AWS's: botocore's event-stream parser (what AnthropicBedrock streams with)
    reads them back to the same events."""
    from anthropic.lib.bedrock._stream_decoder import AWSEventStreamDecoder

    data = b"".join(encode_event(e) for e in EVENTS)
    got = [json.loads(sse.data) for sse in AWSEventStreamDecoder().iter_bytes(iter([data[:5], data[5:]]))]
    assert got == EVENTS


def test_a_corrupt_frame_stops_decoding() -> None:
    good, bad = encode_event(EVENTS[0]), bytearray(encode_event(EVENTS[1]))
    bad[20] ^= 0xFF  # a byte of the headers: the message CRC no longer matches
    parser = EventStreamParser()
    assert parser.feed(good + bytes(bad) + encode_event(EVENTS[2])) == [EVENTS[0]]
    assert parser.overflow and "CRC" in (parser.error or "")
    assert parser.feed(encode_event(EVENTS[3])) == []  # nothing more is read
    prelude = bytearray(good)
    prelude[9] ^= 1
    assert EventStreamParser().feed(bytes(prelude)) == []


def test_a_frame_past_the_limit_overflows() -> None:
    big = encode_event({"type": "content_block_delta", "index": 0,
                        "delta": {"type": "text_delta", "text": "x" * 5000}})
    parser = EventStreamParser(limit=1000)
    assert parser.feed(big[:12]) == [] and parser.overflow  # known from its prelude, not waited for
    assert struct.unpack(">I", big[:4])[0] > 1000
    # A frame that is not a chunk (no :event-type chunk) is skipped, not an error.
    other = encode_frame({":event-type": "initial-response", ":message-type": "event"}, b"{}")
    junk = encode_frame({":event-type": "chunk", ":message-type": "event"},
                        json.dumps({"bytes": base64.b64encode(b"[1]").decode()}).encode())
    assert EventStreamParser().feed(other + junk + encode_event(EVENTS[3])) == [EVENTS[3]]
