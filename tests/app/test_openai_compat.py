"""OpenAI-compatible chat requests and answers in the Messages API's terms (app/openai_compat), field by
field, and the gateway's watch over such answers (relay.ChatWatch)."""

import json

import pytest

from tierguard.app.openai_compat import (
    DEFAULT_MAX_TOKENS,
    ChatAssembler,
    Untranslatable,
    messages_answer,
    messages_request,
)
from tierguard.app.relay import ChatWatch
from tierguard.app.stream import UNASSEMBLED
from tierguard.sim.server import request_problem

USER = {"role": "user", "content": "The parcel arrived damaged."}
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


def chat(**fields):
    return {"model": "claude-opus-4-7", "messages": [USER], **fields}


def test_system_and_developer_messages_are_hoisted_wherever_they_are():
    body = messages_request(chat(messages=[
        {"role": "system", "content": "sentiment: classify"}, USER,
        {"role": "assistant", "content": "NEGATIVE"},
        {"role": "developer", "content": [{"type": "text", "text": "One word."},
                                          {"type": "text", "text": "Upper case."}]},
        {"role": "user", "content": "And now?", "name": "ignored"}]))
    assert body == {"model": "claude-opus-4-7", "max_tokens": DEFAULT_MAX_TOKENS,
                    "system": "sentiment: classify\nOne word.\nUpper case.",
                    "messages": [USER, {"role": "assistant", "content": "NEGATIVE"},
                                 {"role": "user", "content": "And now?"}]}
    assert request_problem(body) is None  # what the Messages API takes
    assert "system" not in messages_request(chat())


@pytest.mark.parametrize(("fields", "expected"), [
    ({}, DEFAULT_MAX_TOKENS),
    ({"max_tokens": 16}, 16),
    ({"max_completion_tokens": 32}, 32),
    ({"max_completion_tokens": 32, "max_tokens": 16}, 32),
])
def test_max_tokens_comes_from_max_completion_tokens_then_max_tokens(fields, expected):
    assert messages_request(chat(**fields))["max_tokens"] == expected


def test_sampling_fields_and_stop_sequences():
    body = messages_request(chat(temperature=1.7, top_p=0.9, stop=["END", "  ", "\n\n###"]))
    assert (body["temperature"], body["top_p"], body["stop_sequences"]) == (1.0, 0.9, ["END", "\n\n###"])
    assert messages_request(chat(temperature=0.2))["temperature"] == 0.2
    assert messages_request(chat(stop="END"))["stop_sequences"] == ["END"]
    assert "stop_sequences" not in messages_request(chat(stop=[" ", "\t"]))  # whitespace-only: dropped


def test_ignored_fields_stay_out_and_thinking_and_stream_go_in():
    ignored = {"response_format": {"type": "json_object"}, "stream_options": {"include_usage": True},
               "logprobs": True, "top_logprobs": 2, "metadata": {"a": "b"}, "user": "u-1", "seed": 7,
               "presence_penalty": 0.5, "frequency_penalty": 0.5, "logit_bias": {"50256": -100},
               "prediction": {"type": "content", "content": "x"}, "service_tier": "auto", "store": True,
               "audio": {"voice": "alloy"}, "modalities": ["text"], "reasoning_effort": "low", "n": 1}
    thinking = {"type": "enabled", "budget_tokens": 2000}
    body = messages_request(chat(stream=True, thinking=thinking, **ignored))
    assert body == {"model": "claude-opus-4-7", "max_tokens": DEFAULT_MAX_TOKENS, "messages": [USER],
                    "thinking": thinking, "stream": True}


def test_tools_and_tool_choice():
    tools = [{"type": "function", "function": {"name": "lookup", "description": "Find an order.",
                                               "parameters": {"type": "object",
                                                              "properties": {"id": {"type": "string"}}},
                                               "strict": True}},
             {"type": "function", "function": {"name": "now"}}]
    body = messages_request(chat(tools=tools, tool_choice="required", parallel_tool_calls=False))
    assert body["tools"] == [{"name": "lookup", "description": "Find an order.",
                              "input_schema": {"type": "object", "properties": {"id": {"type": "string"}}}},
                             {"name": "now", "input_schema": {"type": "object", "properties": {}}}]
    assert body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    choices = {"auto": {"type": "auto"}, "none": {"type": "none"},
               json.dumps({"type": "function", "function": {"name": "now"}}): {"type": "tool", "name": "now"}}
    for given, expected in choices.items():
        value = json.loads(given) if given.startswith("{") else given
        assert messages_request(chat(tools=tools, tool_choice=value))["tool_choice"] == expected
    assert messages_request(chat(tools=tools, parallel_tool_calls=False))["tool_choice"] == {
        "type": "auto", "disable_parallel_tool_use": True}
    assert messages_request(chat(tools=tools, tool_choice="none", parallel_tool_calls=False))[
        "tool_choice"] == {"type": "none"}
    assert "tool_choice" not in messages_request(chat(parallel_tool_calls=False))  # no tools


def test_tool_calls_and_tool_results_become_blocks_in_turns():
    calls = [{"id": "call_1", "type": "function",
              "function": {"name": "lookup", "arguments": '{"id": "A1"}'}},
             {"id": "call_2", "type": "function", "function": {"name": "now", "arguments": ""}}]
    body = messages_request(chat(messages=[
        USER, {"role": "assistant", "content": "Let me look.", "tool_calls": calls},
        {"role": "tool", "tool_call_id": "call_1", "content": "shipped"},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "noon"}]},
        {"role": "user", "content": "So?"},
        {"role": "assistant", "content": None, "tool_calls": calls[1:]}]))
    assert body["messages"] == [
        USER,
        {"role": "assistant", "content": [
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "call_1", "name": "lookup", "input": {"id": "A1"}},
            {"type": "tool_use", "id": "call_2", "name": "now", "input": {}}]},
        {"role": "user", "content": [  # consecutive user-side turns merged, as the API merges them
            {"type": "tool_result", "tool_use_id": "call_1", "content": "shipped"},
            {"type": "tool_result", "tool_use_id": "call_2", "content": "noon"},
            {"type": "text", "text": "So?"}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "call_2", "name": "now", "input": {}}]}]
    assert request_problem(body) is None


def test_images_by_data_url_and_by_url_and_audio_is_dropped():
    parts = [{"type": "text", "text": "What is this?"},
             {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}", "detail": "high"}},
             {"type": "image_url", "image_url": {"url": "https://example.test/cat.jpg"}},
             {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]
    body = messages_request(chat(messages=[{"role": "user", "content": parts}]))
    assert body["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.test/cat.jpg"}}]}]


@pytest.mark.parametrize(("fields", "named"), [
    ({"n": 2}, "n:"),
    ({"functions": [{"name": "f"}]}, "functions:"),
    ({"function_call": "auto"}, "function_call:"),
    ({"messages": []}, "messages:"),
    ({"messages": "hello"}, "messages:"),
    ({"messages": [USER, "hello"]}, "messages[1]:"),
    ({"messages": [{"role": "function", "name": "f", "content": "1"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "f"}}]}]},
     "messages[0].content[0].type"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
     "messages[0].content: nothing but audio"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,x"}}]}]},
     "messages[0].content[0].image_url.url"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}]}]},
     "messages[0].content[0].image_url.url"),
    ({"messages": [{"role": "assistant", "content": None}]}, "messages[0]:"),
    ({"messages": [{"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}]},
     "messages[0].tool_calls[0].function.arguments"),
    ({"messages": [{"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]},
     "messages[0].tool_calls[0].function.arguments"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
    ({"tools": [{"type": "web_search"}]}, "tools[0]"),
    ({"tool_choice": "sometimes"}, "tool_choice"),
    ({"max_tokens": "16"}, "max_tokens:"),
    ({"temperature": "hot"}, "temperature:"),
    ({"stop": [1]}, "stop:"),
])
def test_a_request_without_a_messages_equivalent_is_untranslatable_naming_the_field(fields, named):
    with pytest.raises(Untranslatable, match=named.replace("[", r"\[").replace("]", r"\]")):
        messages_request(chat(**fields))


def test_any_other_shape_is_untranslatable_too():
    for odd in (None, [], {"model": "m", "messages": [{"role": "user", "content": [7]}]},
                {"model": "m", "messages": [{"role": "assistant", "content": [{"type": "text"}]}]}):
        with pytest.raises(Untranslatable):
            messages_request(odd)


COMPLETION = {"id": "chatcmpl-1", "object": "chat.completion", "model": "claude-haiku-4-5",
              "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                  "role": "assistant", "content": "Looking.",
                  "tool_calls": [{"id": "call_1", "type": "function",
                                  "function": {"name": "lookup", "arguments": '{"id": "A1"}'}}]}}],
              "usage": {"prompt_tokens": 30, "completion_tokens": 7, "total_tokens": 37,
                        "prompt_tokens_details": {"cached_tokens": 10}}}


def test_a_completion_is_handed_over_messages_shaped():
    assert messages_answer(COMPLETION) == {
        "type": "message", "id": "chatcmpl-1", "role": "assistant", "model": "claude-haiku-4-5",
        "content": [{"type": "text", "text": "Looking."},
                    {"type": "tool_use", "id": "call_1", "name": "lookup", "input": {"id": "A1"}}],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 20, "output_tokens": 7, "cache_read_input_tokens": 10}}
    for finish, stop in (("stop", "end_turn"), ("length", "max_tokens"), ("content_filter", "refusal")):
        choice = {"index": 0, "finish_reason": finish, "message": {"role": "assistant", "content": "x"}}
        answer = messages_answer({**COMPLETION, "choices": [choice], "usage": None})
        assert (answer["stop_reason"], answer["content"], answer["usage"]) == (
            stop, [{"type": "text", "text": "x"}], None)
    assert messages_answer({"choices": []}) is None and messages_answer([1]) is None


def stream_events(text="POSITIVE", usage=True):
    head = {"id": "chatcmpl-2", "object": "chat.completion.chunk", "model": "claude-haiku-4-5"}
    events = [{**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}]
    events += [{**head, "choices": [{"index": 0, "delta": {"content": text[i:i + 3]}}]}
               for i in range(0, len(text), 3)]
    events += [{**head, "choices": [{"index": 0, "delta": {"tool_calls": [
                   {"index": 0, "id": "call_9", "type": "function",
                    "function": {"name": "lookup", "arguments": '{"id"'}}]}}]},
               {**head, "choices": [{"index": 0, "delta": {"tool_calls": [
                   {"index": 0, "function": {"arguments": ': "A1"}'}}]}}]},
               {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}]
    if usage:
        events.append({**head, "choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 5}})
    return events


def test_a_stream_is_assembled_messages_shaped():
    assembler = ChatAssembler(limit=1000)
    for event in stream_events():
        assembler.feed(event)
    assert assembler.message() == {
        "type": "message", "role": "assistant", "model": "claude-haiku-4-5",
        "content": [{"type": "text", "text": "POSITIVE"},
                    {"type": "tool_use", "id": "call_9", "name": "lookup", "input": {"id": "A1"}}],
        "stop_reason": "tool_use", "usage": {"input_tokens": 12, "output_tokens": 5}}
    short = ChatAssembler(limit=5)  # past the limit: the usage only, never shadowed
    usage_only = ChatAssembler(limit=1000, usage_only=True)
    for event in stream_events():
        short.feed(event)
        usage_only.feed(event)
    assert short.message()[UNASSEMBLED] and short.message()["content"] == []
    assert short.message()["usage"] == usage_only.message()["usage"] == {"input_tokens": 12,
                                                                          "output_tokens": 5}


def sse(events, done=True) -> bytes:
    raw = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    return raw + (b"data: [DONE]\n\n" if done else b"")


def test_the_gateways_watch_reads_chat_streams_in_any_pieces_and_needs_done():
    raw = sse(stream_events())
    for step in (1, 7, len(raw)):
        watch = ChatWatch(stream=True, limit=10_000)
        watch.status = 200
        for i in range(0, len(raw), step):
            watch.feed(raw[i:i + step])
        assert watch.answer()["content"][0] == {"type": "text", "text": "POSITIVE"}
    cut = ChatWatch(stream=True)
    cut.status = 200
    cut.feed(sse(stream_events(), done=False))
    assert cut.answer() is None  # a stream that did not end is not handed over
    unsampled = ChatWatch(stream=True, usage_only=True)
    unsampled.status = 200
    unsampled.feed(sse(stream_events(usage=False)))
    assert unsampled.answer() == {"usage": None}  # no include_usage: no tokens to count
    whole = ChatWatch(stream=False)
    whole.status = 200
    body = json.dumps(COMPLETION).encode()
    whole.feed(body[:20])
    whole.feed(body[20:])
    assert whole.answer() == messages_answer(COMPLETION)
    over = ChatWatch(stream=True, limit=len(raw) // 2)
    over.status = 200
    over.feed(raw)
    assert over.answer()[UNASSEMBLED] and over.answer()["usage"] == {"input_tokens": 12, "output_tokens": 5}


def test_odd_answers_are_read_without_raising():
    odd = {"choices": [{"message": "text", "finish_reason": ["x"]}], "usage": {"prompt_tokens": "9"}}
    assert messages_answer(odd)["content"] == [] and messages_answer(odd)["usage"] == {
        "input_tokens": 0, "output_tokens": 0}
    calls = {"choices": [{"message": {"content": 7, "tool_calls": [
        {"id": "c", "function": {"name": "f", "arguments": {"already": "parsed"}}}, "junk"]}}]}
    assert messages_answer(calls)["content"] == [
        {"type": "tool_use", "id": "c", "name": "f", "input": {"_unparsed": {"already": "parsed"}}}]
    assembler = ChatAssembler(limit=100)
    for chunk in ({"choices": ["x", {"delta": "y"}, {"index": 0, "delta": {"tool_calls": ["z", {
                      "index": 0, "function": "w"}]}}]}, {"choices": None, "usage": [1]}):
        assembler.feed(chunk)
    assert assembler.message()["content"] == [{"type": "tool_use", "id": None, "name": None, "input": {}}]
