"""The simulator's OpenAI-compatible endpoint (sim/chat) to the real ``openai`` SDK: the same answers and
usage as ``/v1/messages``, JSON and streamed, and the API's refusals."""

import anthropic
import httpx2
import openai
import pytest

from tests.helpers import API_KEY

SCENARIO = {"seed": 5, "categories": {
    "invoice": {"kind": "json", "agreement": 1.0},
    "sentiment": {"kind": "label", "labels": ["POSITIVE", "NEGATIVE"], "agreement": 0.0}}}
SYSTEM = "invoice: extract"


def clients(server):
    return (openai.OpenAI(base_url=server.base_url + "/v1", api_key=API_KEY, max_retries=0),
            anthropic.Anthropic(base_url=server.base_url, api_key=API_KEY, max_retries=0))


def test_a_chat_completion_is_the_messages_answer_with_its_usage(simulator):
    chat, messages = clients(simulator(**SCENARIO))
    for model in ("claude-opus-4-7", "claude-haiku-4-5"):
        answer = chat.chat.completions.create(model=model, max_completion_tokens=64, messages=[
            {"role": "system", "content": SYSTEM}, {"role": "user", "content": "INV 7"}])
        same = messages.messages.create(model=model, max_tokens=64, system=SYSTEM,
                                        messages=[{"role": "user", "content": "INV 7"}])
        assert answer.model == model and answer.choices[0].message.content == same.content[0].text
        assert answer.choices[0].finish_reason == "stop" and answer.object == "chat.completion"
        assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (
            same.usage.input_tokens, same.usage.output_tokens)
    # A candidate scripted to disagree does so on this path too.
    ask = {"max_tokens": 8, "messages": [{"role": "system", "content": "sentiment: classify"},
                                         {"role": "user", "content": "fine"}]}
    labels = {m: chat.chat.completions.create(model=m, **ask).choices[0].message.content
              for m in ("claude-opus-4-7", "claude-haiku-4-5")}
    assert labels["claude-opus-4-7"] != labels["claude-haiku-4-5"]


@pytest.mark.parametrize("usage", [True, False])
def test_a_streamed_chat_completion_ends_with_done_and_usage_only_when_asked(simulator, usage):
    server = simulator(**SCENARIO)
    chat, _ = clients(server)
    request = {"model": "claude-opus-4-7", "max_tokens": 64,
               "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "INV 9"}]}
    whole = chat.chat.completions.create(**request)
    more = {"stream_options": {"include_usage": True}} if usage else {}
    chunks = list(chat.chat.completions.create(**request, stream=True, **more))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
        whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert (chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens) if usage else \
        all(c.usage is None for c in chunks)
    raw = httpx2.post(server.base_url + "/v1/chat/completions", json={**request, "stream": True},
                      headers={"authorization": f"Bearer {API_KEY}"})
    assert raw.headers["content-type"] == "text/event-stream" and raw.text.endswith("data: [DONE]\n\n")


def test_the_api_refuses_what_it_refuses(simulator):
    chat, _ = clients(simulator(**SCENARIO))
    with pytest.raises(openai.BadRequestError, match="n: only 1"):
        chat.chat.completions.create(model="claude-opus-4-7", n=2,
                                     messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match=r"messages\[0\].role"):
        chat.chat.completions.create(model="claude-opus-4-7", messages=[{"role": "robot", "content": "hi"}])
