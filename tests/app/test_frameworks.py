"""Ordinary production code against real parts (issue 23): LiteLLM and LangChain through the gateway,
a chat loop, a batch of awkward jobs and a misspelled category through the SDK wrapper.

Every test runs a real ``tierguard worker`` (and gateway) against the simulated Messages API, and
checks two things from the outside: each sampled call ends as exactly one row in ``sample`` (a
comparison, or an error with its reason), and the shadow request the worker sent is the request
production sent — the same body but for ``model`` (and without ``stream``), the same
``anthropic-beta`` — read back from the simulator's ``GET /_sim/requests``.

Which clients take a client object: the wrapper needs one (``ShadowedAnthropic(anthropic.Anthropic())``).
LiteLLM speaks HTTP itself (no anthropic client to wrap) and langchain-anthropic 1.7 builds its own
``anthropic.Client`` from ``base_url``/``api_key`` (no field takes a client): both go through the
gateway only.

Versions these were written against: anthropic 2.16 (its ``messages.create`` has no ``temperature``
or ``top_k`` argument: those travel as ``extra_body``, which is what LangChain does with them),
LiteLLM 1.110, langchain-anthropic 1.7.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx2
import pytest
from sqlmodel import select

import tierguard
from tests.helpers import API_KEY, samples, wait_until
from tierguard.store.db import make_engine, session
from tierguard.store.tables import Sample

HAIKU, OPUS = "claude-haiku-4-5", "claude-opus-4-7"
LABELS = ["POSITIVE", "NEGATIVE"]
SCENARIO = {"categories": {"sentiment": {"kind": "label", "labels": LABELS, "agreement": 1.0}}}
POLICY = {"models": {"candidate": HAIKU, "reference": OPUS},
          "defaults": {"sample_rate": 1.0, "start_on": "cheapest"},
          "categories": {"sentiment": {"comparator": {"type": "label", "labels": LABELS}}}}
SYSTEM = "sentiment: classify the customer's message"
CATEGORY = {"x-tierguard-category": "sentiment"}
BETA = "context-management-2025-06-27"
CONTEXT_MANAGEMENT = {"edits": [{"type": "clear_tool_uses_20250919"}]}
WAIT = 20  # seconds for rows to appear; a passing test needs one or two


# --- no network but this machine's ------------------------------------------------------------

_LOCAL = {"127.0.0.1", "::1", "localhost", "", None}


@pytest.fixture(autouse=True)
def local_network_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Any connection or name lookup in this process other than 127.0.0.1 fails the test (LiteLLM
    and LangChain must not fetch price lists, beta tables or telemetry from anywhere)."""
    connect, getaddrinfo = socket.socket.connect, socket.getaddrinfo
    refused: list[Any] = []

    def guarded_connect(sock: socket.socket, address: Any) -> Any:
        if isinstance(address, tuple) and address[0] not in _LOCAL:
            refused.append(address)
            raise OSError(f"test: no network but 127.0.0.1 (tried {address!r})")
        return connect(sock, address)

    def guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name not in _LOCAL:
            refused.append(name)
            raise socket.gaierror(f"test: no name lookups but 127.0.0.1 (tried {name!r})")
        return getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    yield
    assert refused == [], f"something in the test process reached for the network: {refused}"


@pytest.fixture(scope="module")
def litellm() -> Iterator[Any]:
    """LiteLLM with its bundled price list and beta table, no callbacks: nothing fetched."""
    with pytest.MonkeyPatch.context() as mp:
        for name in ("LITELLM_LOCAL_MODEL_COST_MAP", "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS",
                     "LITELLM_LOCAL_BLOG_POSTS"):
            mp.setenv(name, "True")
        mp.setenv("LITELLM_OFFLINE_MODE", "true")
        import litellm as module

        for name in ("callbacks", "input_callback", "success_callback", "failure_callback",
                     "service_callback", "_async_success_callback", "_async_failure_callback"):
            mp.setattr(module, name, [])
        mp.setattr(module, "suppress_debug_info", True)
        yield module


# --- reading what happened ---------------------------------------------------------------------


def sim_requests(sim: Any) -> list[tuple[dict[str, str], dict[str, Any]]]:
    """(shaping headers, parsed body) of the simulator's latest /v1/messages requests."""
    got = httpx2.get(sim.base_url + "/_sim/requests", timeout=5).json()["requests"]
    return [(r["headers"], json.loads(r["body"])) for r in got]


def text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(b.get("text", "") for b in content if isinstance(b, dict))


def last_user_text(body: dict[str, Any]) -> str:
    return text_of(body["messages"][-1]["content"])


def requests_by_text(sim: Any, model: str) -> dict[str, list[tuple[dict[str, str], dict[str, Any]]]]:
    """The simulator's requests for ``model``, by the text of their last message."""
    found: dict[str, list[tuple[dict[str, str], dict[str, Any]]]] = {}
    for headers, body in sim_requests(sim):
        if body.get("model") == model:
            found.setdefault(last_user_text(body), []).append((headers, body))
    return found


def rows(url: str) -> list[Sample]:
    with session(make_engine(url)) as s:
        return list(s.exec(select(Sample)))


def reached(sim: Any) -> list[tuple[str, str, bool]]:
    """(model, last message, streamed) of each request the simulator kept, in order."""
    try:
        return [(b.get("model"), last_user_text(b), b.get("stream") is True) for _, b in sim_requests(sim)]
    except Exception as err:  # (a failure's message: never a second failure)
        return [("unread", repr(err), False)]


def describe(found: list[Sample]) -> list[tuple]:
    return [(r.category, r.served_model, r.shadow_model, r.error, r.reason) for r in found]


def assert_one_row_per_call(url: str, expected: int, sim: Any = None) -> list[Sample]:
    """Exactly ``expected`` rows, one per job: each a comparison or an error with its reason (when
    they do not come: with ``sim``, what reached the simulator, by model and last message)."""
    try:
        wait_until(lambda: samples(url) >= expected, WAIT, f"{expected} sample rows")
    except AssertionError as err:
        seen = "" if sim is None else f"; the simulator's requests: {reached(sim)}"
        raise AssertionError(f"{err}; rows so far: {describe(rows(url))}{seen}") from None
    found = rows(url)
    assert len(found) == len({r.job_id for r in found}) == expected, describe(found)
    for r in found:
        if r.error is None:
            assert r.agree is not None, describe([r])
        else:  # a recorded error says what went wrong
            assert r.reason and r.reason.strip(), describe([r])
    return found


def assert_shadow_is_production(sim: Any, texts: list[str], served: str, shadow: str,
                                beta: frozenset[str] | set[str] = frozenset()) -> None:
    """For each call (by the text of its last message): the worker's shadow request is the
    request production sent — the same body but for ``model``, no ``stream`` — and carries the
    same ``anthropic-beta`` (only the calls named in ``beta`` have one)."""
    production, shadows = requests_by_text(sim, served), requests_by_text(sim, shadow)
    for text in texts:
        assert len(production.get(text, [])) == 1, (text, production.get(text))
        assert shadows.get(text), f"no shadow request reached {shadow} for {text!r}"
        prod_headers, prod_body = production[text][0]
        expected = {k: v for k, v in prod_body.items() if k not in ("model", "stream")}
        for headers, body in shadows[text]:  # retries of one shadow are the same request
            assert "stream" not in body, body
            assert {k: v for k, v in body.items() if k != "model"} == expected, (text, body, prod_body)
            assert headers.get("anthropic-beta") == prod_headers.get("anthropic-beta"), (text, headers)
        assert ("anthropic-beta" in prod_headers) == (text in beta), (text, prod_headers)


# --- 1. LiteLLM and LangChain through the gateway ----------------------------------------------


def test_litellm_through_the_gateway_every_call_recorded_with_its_temperature(
        stack, simulator, sqlite_url, litellm):
    sim = simulator(**SCENARIO)
    stack.configure(policy=POLICY, database_url=sqlite_url, base_url=sim.base_url)
    stack.start_worker(concurrency=4)
    gateway = stack.start_gateway()
    # LiteLLM refuses temperature != 1 for claude-opus-4-7 on the client side (its model map says
    # Opus 4.7 takes no sampling parameters), so the calls that set one name Haiku; the gateway
    # routes by category whatever the body's model says.
    common = {"api_base": gateway, "api_key": API_KEY, "max_tokens": 16, "num_retries": 0,
              "extra_headers": CATEGORY}

    def ask(text: str, **kwargs: Any) -> Any:
        return litellm.completion(messages=[{"role": "system", "content": SYSTEM},
                                            {"role": "user", "content": text}], **common, **kwargs)

    plain = ask("litellm: plain", model="anthropic/" + HAIKU, temperature=0.2)
    assert plain.model == HAIKU and plain.choices[0].message.content in LABELS  # routed
    streamed = ask("litellm: streamed", model="anthropic/" + HAIKU, temperature=0.2, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed) in LABELS
    sampling = ask("litellm: top_p and top_k", model="anthropic/" + HAIKU, temperature=0.2,
                   top_p=0.9, top_k=5)
    assert sampling.choices[0].message.content in LABELS
    on_opus = ask("litellm: opus", model="anthropic/" + OPUS, temperature=1)
    assert on_opus.model == HAIKU  # the route, not the body's model
    texts = ["litellm: plain", "litellm: streamed", "litellm: top_p and top_k", "litellm: opus"]

    found = assert_one_row_per_call(sqlite_url, len(texts), sim)
    assert {(r.category, r.served_model, r.shadow_model) for r in found} == {("sentiment", HAIKU, OPUS)}
    production = requests_by_text(sim, HAIKU)
    assert production["litellm: plain"][0][1]["temperature"] == 0.2
    assert production["litellm: streamed"][0][1]["stream"] is True
    assert production["litellm: top_p and top_k"][0][1]["top_k"] == 5
    assert_shadow_is_production(sim, texts, HAIKU, OPUS)


def test_langchain_through_the_gateway_every_call_recorded_with_its_temperature(
        stack, simulator, sqlite_url):
    from langchain_anthropic import ChatAnthropic

    # langchain-anthropic builds its own anthropic.Client: there is no client object to wrap.
    assert not {"client", "anthropic_client"} & set(ChatAnthropic.model_fields), (
        "ChatAnthropic now takes a client object: drive it through tierguard.ShadowedAnthropic too")
    sim = simulator(**SCENARIO)
    stack.configure(policy=POLICY, database_url=sqlite_url, base_url=sim.base_url)
    stack.start_worker(concurrency=4)
    gateway = stack.start_gateway()

    def chat(**kwargs: Any) -> ChatAnthropic:
        return ChatAnthropic(model=OPUS, base_url=gateway, api_key=API_KEY, default_headers=CATEGORY,
                             temperature=0.2, max_tokens=16, max_retries=0, **kwargs)

    def conversation(text: str) -> list[tuple[str, str]]:
        return [("system", SYSTEM), ("human", text)]

    invoked = chat().invoke(conversation("langchain: invoke"))
    assert invoked.content in LABELS and invoked.response_metadata["model_name"] == HAIKU
    streamed = "".join(chunk.content for chunk in chat().stream(conversation("langchain: stream")))
    assert streamed in LABELS
    assert chat(top_k=5).invoke(conversation("langchain: top_k")).content in LABELS
    beta = chat(betas=[BETA], context_management=CONTEXT_MANAGEMENT).invoke(
        conversation("langchain: beta"))
    assert beta.content in LABELS
    texts = ["langchain: invoke", "langchain: stream", "langchain: top_k", "langchain: beta"]

    found = assert_one_row_per_call(sqlite_url, len(texts), sim)
    assert {(r.category, r.served_model, r.shadow_model) for r in found} == {("sentiment", HAIKU, OPUS)}
    production = requests_by_text(sim, HAIKU)
    assert all(production[t][0][1]["temperature"] == 0.2 for t in texts)  # sent via extra_body
    assert production["langchain: stream"][0][1]["stream"] is True
    assert production["langchain: beta"][0][0]["anthropic-beta"] == BETA
    assert_shadow_is_production(sim, texts, HAIKU, OPUS, beta={"langchain: beta"})


# --- 2. a chat loop that appends to one list ---------------------------------------------------


def test_a_chat_loop_appending_to_one_list_shadows_each_turn_as_it_was(stack, simulator, sqlite_url):
    sim = simulator(**SCENARIO)
    stack.configure(policy=POLICY, database_url=sqlite_url, base_url=sim.base_url)
    stack.start_worker(concurrency=4)
    client = tierguard.ShadowedAnthropic(anthropic.Anthropic(base_url=sim.base_url, api_key=API_KEY,
                                                             max_retries=0))
    messages: list[dict[str, Any]] = [{"role": "user", "content": "turn 1: the parcel arrived damaged"}]
    asked = [messages[0]["content"]]
    try:
        for turn in range(1, 6):  # the usual loop: append the answer and the next question, go on
            answer = client.messages.create(category="sentiment", model=OPUS, max_tokens=16,
                                            system=SYSTEM, messages=messages)
            assert answer.model == HAIKU
            messages.append({"role": "assistant", "content": answer.content})  # the SDK's own blocks
            asked.append(f"turn {turn + 1}: and what about now?")
            messages.append({"role": "user", "content": asked[-1]})
        assert client.tierguard_flush(10)
    finally:
        client.tierguard_close()

    found = assert_one_row_per_call(sqlite_url, 5, sim)
    assert {(r.category, r.served_model, r.shadow_model, r.error) for r in found} == {
        ("sentiment", HAIKU, OPUS, None)}
    shadows = [body for _, body in sim_requests(sim) if body["model"] == OPUS]
    assert sorted(len(b["messages"]) for b in shadows) == [1, 3, 5, 7, 9], [
        [text_of(m["content"]) for m in b["messages"]] for b in shadows]
    for body in shadows:  # each turn's conversation as it was when that turn was sent
        n = len(body["messages"])
        turn = (n + 1) // 2
        assert last_user_text(body).startswith(f"turn {turn}:"), body
        assert [m["role"] for m in body["messages"]] == [m["role"] for m in messages[:n]]
        assert [text_of(m["content"]) for m in body["messages"]] == [
            text_of(m["content"]) if isinstance(m["content"], str)
            else "".join(block.text for block in m["content"]) for m in messages[:n]]
    assert_shadow_is_production(sim, asked[:5], HAIKU, OPUS)


# --- 3. one job of each awkward kind: one row each --------------------------------------------

ODD_POLICY = {"models": {"candidate": HAIKU, "reference": OPUS},
              "defaults": {"sample_rate": 1.0, "start_on": "cheapest"},
              "categories": {name: {} for name in (
                  "odd-temperature", "odd-top-k", "odd-beta", "odd-plain",  # through the gateway
                  "odd-sentinels", "odd-extra-body")}}  # through the wrapper


def test_a_batch_of_awkward_jobs_gives_one_row_each(stack, simulator, sqlite_url):
    sim = simulator(categories={})  # every answer is an echo of the prompt: both models agree
    stack.configure(policy=ODD_POLICY, database_url=sqlite_url, base_url=sim.base_url)
    stack.start_worker(concurrency=4)
    gateway = stack.start_gateway()
    base = {"model": OPUS, "max_tokens": 16, "system": "answer briefly"}
    auth = {"x-api-key": API_KEY, "anthropic-version": "2023-06-01"}
    through_gateway = {  # category: (extra body keys, extra headers)
        "odd-temperature": ({"temperature": 0.2}, {}),
        "odd-top-k": ({"top_k": 5}, {}),
        "odd-beta": ({"context_management": CONTEXT_MANAGEMENT}, {"anthropic-beta": BETA}),
        "odd-plain": ({}, {}),
    }
    client = tierguard.ShadowedAnthropic(anthropic.Anthropic(base_url=sim.base_url, api_key=API_KEY,
                                                             max_retries=0))
    # anthropic 2.16's create() takes no temperature/top_k (temperature=anthropic.NOT_GIVEN is the
    # SDK's own TypeError): the sentinels go on arguments it has, sampling keys through extra_body.
    through_wrapper = {
        "odd-sentinels": {"metadata": anthropic.NOT_GIVEN, "stop_sequences": anthropic.omit,
                          "extra_headers": {"anthropic-beta": BETA},
                          "extra_body": {"context_management": CONTEXT_MANAGEMENT}},
        "odd-extra-body": {"extra_body": {"temperature": 0.2, "top_k": 5}},
    }
    start = threading.Barrier(len(through_gateway) + len(through_wrapper))
    answers: dict[str, Any] = {}

    def gateway_call(category: str) -> None:
        keys, headers = through_gateway[category]
        start.wait()
        answers[category] = httpx2.post(
            gateway + "/v1/messages", timeout=30,
            json={**base, **keys, "messages": [{"role": "user", "content": category}]},
            headers={**auth, **headers, "x-tierguard-category": category})

    def wrapper_call(category: str) -> None:
        start.wait()
        answers[category] = client.messages.create(
            category=category, **base, messages=[{"role": "user", "content": category}],
            **through_wrapper[category])

    threads = [threading.Thread(target=gateway_call, args=(c,)) for c in through_gateway] + [
        threading.Thread(target=wrapper_call, args=(c,)) for c in through_wrapper]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert client.tierguard_flush(10)
    finally:
        client.tierguard_close()
    for category in through_gateway:  # production itself was answered
        assert answers[category].status_code == 200, (category, answers[category].text)
        assert answers[category].json()["model"] == HAIKU
    for category in through_wrapper:
        assert answers[category].model == HAIKU

    found = assert_one_row_per_call(sqlite_url, len(through_gateway) + len(through_wrapper), sim)
    assert sorted(r.category for r in found) == sorted([*through_gateway, *through_wrapper])
    assert {(r.served_model, r.shadow_model) for r in found} == {(HAIKU, OPUS)}
    production = requests_by_text(sim, HAIKU)
    assert production["odd-extra-body"][0][1]["temperature"] == 0.2
    assert "metadata" not in production["odd-sentinels"][0][1]
    assert_shadow_is_production(sim, [*through_gateway, *through_wrapper], HAIKU, OPUS,
                                beta={"odd-beta", "odd-sentinels"})
    for _, body in sim_requests(sim):  # no SDK sentinel reached the API as a value
        assert "NOT_GIVEN" not in json.dumps(body) and "Omit" not in json.dumps(body), body


# --- 4. a category the policy does not list ----------------------------------------------------


def test_a_misspelled_category_is_served_by_the_callers_model_tracked_and_shadowed(
        stack, simulator, sqlite_url):
    sim = simulator(**SCENARIO)
    stack.configure(policy=POLICY, database_url=sqlite_url, base_url=sim.base_url)
    stack.start_worker(concurrency=4)
    client = tierguard.ShadowedAnthropic(anthropic.Anthropic(base_url=sim.base_url, api_key=API_KEY,
                                                             max_retries=0))
    try:
        def ask(category: str, text: str, **kwargs: Any) -> Any:
            return client.messages.create(category=category, max_tokens=16, system=SYSTEM,
                                          messages=[{"role": "user", "content": text}], **kwargs)

        assert ask("sentimnet", "misspelled, opus asked", model=OPUS).model == OPUS
        assert ask("sentimnet", "misspelled, no model").model == OPUS  # the reference when none named
        assert ask("sentiment", "listed", model=OPUS).model == HAIKU  # a listed category still routes
        assert client.tierguard_flush(10)
    finally:
        client.tierguard_close()
    found = assert_one_row_per_call(sqlite_url, 3, sim)
    assert sorted((r.category, r.served_model, r.shadow_model, r.error) for r in found) == [
        ("sentiment", HAIKU, OPUS, None), ("sentimnet", OPUS, HAIKU, None),
        ("sentimnet", OPUS, HAIKU, None)]
    shadows = requests_by_text(sim, HAIKU)
    assert {"misspelled, opus asked", "misspelled, no model", "listed"} <= set(shadows)


def test_without_a_policy_file_nothing_is_rerouted(stack, simulator, sqlite_url, tmp_path,
                                                   monkeypatch):
    sim = simulator(**SCENARIO)
    stack.configure(policy=POLICY, database_url=sqlite_url, base_url=sim.base_url)
    monkeypatch.setenv("TIERGUARD_POLICY", str(tmp_path / "no-such-policy.yaml"))
    assert not os.path.exists(tmp_path / "no-such-policy.yaml")
    client = tierguard.ShadowedAnthropic(anthropic.Anthropic(base_url=sim.base_url, api_key=API_KEY,
                                                             max_retries=0))
    try:
        for category, model in (("sentiment", OPUS), ("sentimnet", OPUS), ("anything", OPUS),
                                ("sentiment", HAIKU)):
            served = client.messages.create(category=category, model=model, max_tokens=16, system=SYSTEM,
                                            messages=[{"role": "user", "content": category}])
            assert served.model == model, (category, model, served.model)
    finally:
        client.tierguard_close()
