"""The simulated Message Batches API, driven by the real SDK."""

import asyncio
import datetime as dt
import time

import anthropic
import httpx2
import pytest

from tests.helpers import API_KEY, wait_until

SCENARIO = {"seed": 5, "batch_delay_s": 0.3, "categories": {
    "sentiment": {"kind": "label", "labels": ["POSITIVE", "NEGATIVE", "NEUTRAL"]},
    "invoice": {"kind": "json", "agreement": 1.0}}}
REF = "claude-opus-4-7"


def sdk(server, **kw):
    return anthropic.Anthropic(base_url=server.base_url, api_key=API_KEY, max_retries=0, **kw)


def params(text, system="sentiment: classify", model=REF):
    return {"model": model, "max_tokens": 32, "system": system,
            "messages": [{"role": "user", "content": text}]}


def req(cid, text, **kw):
    return {"custom_id": cid, "params": params(text, **kw)}


def ended(client, batch_id):
    wait_until(lambda: client.messages.batches.retrieve(batch_id).processing_status == "ended",
               5, f"batch {batch_id} to end")
    return client.messages.batches.retrieve(batch_id)


def control(server, **body):
    return httpx2.post(server.base_url + "/_sim/batches", json=body).json()


def stats(server):
    return httpx2.get(server.base_url + "/_sim/stats").json()


def test_a_batch_ends_after_its_delay_with_the_answers_of_the_messages_api(simulator):
    server = simulator(**SCENARIO)
    client = sdk(server)
    reqs = [req("a-1", "great"), req("b_2", "awful"), req("c3", "fine", system="invoice: extract")]
    batch = client.messages.batches.create(requests=reqs)
    assert isinstance(batch, anthropic.types.messages.MessageBatch)
    assert batch.id.startswith("msgbatch_") and batch.processing_status == "in_progress"
    assert batch.request_counts.processing == 3 and batch.request_counts.succeeded == 0
    assert batch.ended_at is None and batch.results_url is None and batch.cancel_initiated_at is None
    assert batch.expires_at - batch.created_at == dt.timedelta(hours=24)
    assert client.messages.batches.retrieve(batch.id).processing_status == "in_progress"
    with pytest.raises(anthropic.AnthropicError, match="results_url"):
        client.messages.batches.results(batch.id)
    raw = httpx2.get(f"{server.base_url}/v1/messages/batches/{batch.id}/results")
    assert raw.status_code == 404 and "not finished processing" in raw.json()["error"]["message"]

    done = ended(client, batch.id)
    counts = done.request_counts
    assert (counts.processing, counts.succeeded, counts.errored, counts.canceled, counts.expired) == (
        0, 3, 0, 0, 0)
    assert done.ended_at >= done.created_at + dt.timedelta(seconds=0.29)
    assert done.results_url == f"{server.base_url}/v1/messages/batches/{batch.id}/results"

    results = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}
    assert set(results) == {"a-1", "b_2", "c3"}
    for r in reqs:
        result = results[r["custom_id"]]
        assert result.type == "succeeded"
        assert isinstance(result.message, anthropic.types.Message)
        sync = client.messages.create(**r["params"])
        assert result.message.content[0].text == sync.content[0].text
        assert result.message.usage.input_tokens == sync.usage.input_tokens > 0
        assert result.message.usage.output_tokens == sync.usage.output_tokens > 0
    counted = {(s["model"], s["category"]): s["count"] for s in stats(server)["requests"]}
    assert counted == {(REF, "sentiment"): 4, (REF, "invoice"): 2}  # batch + sync, alike
    assert stats(server)["batches"] == {"created": 1, "ended": 1, "canceled": 0, "requests": 3,
                                        "results": {"succeeded": 3, "errored": 0, "expired": 0,
                                                    "canceled": 0}}


def test_async_sdk_reads_results_and_judge_requests_get_verdicts(simulator):
    server = simulator(**{**SCENARIO, "batch_delay_s": 0})
    tool = {"name": "tierguard_verdict", "description": "verdict",
            "input_schema": {"type": "object", "properties": {}}}
    prompt = ("<reference_answer>\nyes it is\n</reference_answer>\n"
              "<candidate_answer>\nit is yes\n</candidate_answer>")
    judge = {"custom_id": "judge", "params": {**params(prompt, system="judge"), "tools": [tool]}}

    async def run():
        client = anthropic.AsyncAnthropic(base_url=server.base_url, api_key=API_KEY, max_retries=0)
        batch = await client.messages.batches.create(requests=[judge, req("s", "great")])
        for _ in range(50):
            if (await client.messages.batches.retrieve(batch.id)).processing_status == "ended":
                break
            await asyncio.sleep(0.05)
        return {r.custom_id: r.result async for r in await client.messages.batches.results(batch.id)}

    results = asyncio.run(run())
    verdict = results["judge"].message.content[0]
    assert verdict.type == "tool_use" and verdict.input["verdict"] == "equivalent"
    assert results["judge"].message.stop_reason == "tool_use"
    assert results["s"].message.content[0].text in {"POSITIVE", "NEGATIVE", "NEUTRAL"}


def test_scripted_errors_and_expiries_take_the_next_requests_in_order(simulator):
    server = simulator(**SCENARIO)
    client = sdk(server)
    assert control(server, delay_s=0.1, errored=1, error_type="overloaded_error", expired=1)["scripted"] == [
        "overloaded_error", "expired"]
    control(server, errored=1)
    first = client.messages.batches.create(requests=[req("r1", "x"), req("r2", "y")])
    one = ended(client, first.id)  # requests are processed in due order, across batches
    bad = {"custom_id": "no-max", "params": {"model": REF, "messages": [{"role": "user", "content": "z"}]}}
    second = client.messages.batches.create(requests=[req("r3", "x"), req("r4", "w"), bad])
    two = ended(client, second.id)
    assert (one.request_counts.errored, one.request_counts.expired) == (1, 1)
    assert (two.request_counts.errored, two.request_counts.succeeded) == (2, 1)
    results = {r.custom_id: r.result for b in (first, second) for r in client.messages.batches.results(b.id)}
    assert results["r1"].type == "errored" and results["r1"].error.error.type == "overloaded_error"
    assert results["r2"].type == "expired"
    assert results["r3"].type == "errored" and results["r3"].error.error.type == "api_error"
    assert results["r4"].type == "succeeded"
    assert results["no-max"].error.error.type == "invalid_request_error"
    assert "max_tokens" in results["no-max"].error.error.message


def test_error_rate_from_the_scenario(simulator):
    server = simulator(**{**SCENARIO, "batch_delay_s": 0, "batch_error_rate": 1.0})
    client = sdk(server)
    batch = ended(client, client.messages.batches.create(requests=[req("a", "x"), req("b", "y")]).id)
    assert batch.request_counts.errored == 2


def test_cancel_ends_the_unprocessed_requests_as_canceled(simulator):
    server = simulator(**{**SCENARIO, "batch_delay_s": 30})
    client = sdk(server)
    batch = client.messages.batches.create(requests=[req("a", "x"), req("b", "y")])
    canceling = client.messages.batches.cancel(batch.id)
    assert canceling.processing_status == "canceling" and canceling.cancel_initiated_at is not None
    done = ended(client, batch.id)
    assert (done.request_counts.canceled, done.request_counts.succeeded) == (2, 0)
    assert [r.result.type for r in client.messages.batches.results(batch.id)] == ["canceled", "canceled"]
    with pytest.raises(anthropic.BadRequestError, match="already ended"):
        client.messages.batches.cancel(batch.id)
    assert stats(server)["batches"]["canceled"] == 1
    assert stats(server)["requests"] == []  # nothing was answered


def test_cancel_midway_keeps_the_requests_already_answered(simulator):
    server = simulator(**{**SCENARIO, "batch_delay_s": 1.2})
    client = sdk(server)
    batch = client.messages.batches.create(requests=[req(c, c) for c in "abcd"])
    time.sleep(0.75)  # a and b are due at 0.3 s and 0.6 s, c at 0.9 s
    client.messages.batches.cancel(batch.id)
    done = ended(client, batch.id)
    assert (done.request_counts.succeeded, done.request_counts.canceled) == (2, 2)


def test_list_newest_first_with_pagination_and_delete(simulator):
    server = simulator(**{**SCENARIO, "batch_delay_s": 0})
    client = sdk(server)
    ids = [client.messages.batches.create(requests=[req(f"r{i}", str(i))]).id for i in range(5)]
    newest = ids[::-1]
    page = client.messages.batches.list(limit=2)
    assert [b.id for b in page.data] == newest[:2] and page.has_more
    assert (page.first_id, page.last_id) == (newest[0], newest[1])
    assert [b.id for b in client.messages.batches.list(limit=2)] == newest  # the SDK pages on
    assert [b.id for b in client.messages.batches.list(after_id=newest[3])] == newest[4:]
    back = client.messages.batches.list(before_id=newest[3], limit=2)
    assert [b.id for b in back.data] == newest[1:3] and back.has_more
    assert all(b.processing_status == "ended" for b in client.messages.batches.list(limit=20).data)
    with pytest.raises(anthropic.BadRequestError):
        client.messages.batches.list(limit=0)
    deleted = client.messages.batches.delete(ids[0])
    assert (deleted.id, deleted.type) == (ids[0], "message_batch_deleted")
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.retrieve(ids[0])


@pytest.mark.parametrize("requests, message", [
    ([], "non-empty"),
    ([req("same", "x"), req("same", "y")], "duplicate"),
    ([req("has space", "x")], "custom_id"),
    ([req("x" * 65, "x")], "custom_id"),
    ([{"custom_id": "ok"}], "params"),
])
def test_invalid_batches_are_refused(simulator, requests, message):
    server = simulator(**SCENARIO)
    client = sdk(server)
    with pytest.raises(anthropic.BadRequestError, match=message) as err:
        client.messages.batches.create(requests=requests)
    assert err.value.body["error"]["type"] == "invalid_request_error"
    assert stats(server)["batches"]["created"] == 0


def test_unknown_batches_are_not_found(simulator):
    client = sdk(simulator(**{**SCENARIO, "batch_delay_s": 60}))  # still processing when deleted
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.retrieve("msgbatch_nope")
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.cancel("msgbatch_nope")
    with pytest.raises(anthropic.BadRequestError):  # still processing
        client.messages.batches.delete(client.messages.batches.create(requests=[req("a", "x")]).id)


def test_concurrent_polling_answers_each_request_once(simulator):
    from concurrent.futures import ThreadPoolExecutor

    server = simulator(**{**SCENARIO, "batch_delay_s": 0.2})
    client = sdk(server)
    batch = client.messages.batches.create(requests=[req(f"r{i}", f"text {i}") for i in range(200)])
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: ended(client, batch.id), range(8)))
    assert ended(client, batch.id).request_counts.succeeded == 200
    assert stats(server)["requests"] == [{"model": REF, "category": "sentiment", "count": 200}]
    assert stats(server)["batches"]["ended"] == 1
