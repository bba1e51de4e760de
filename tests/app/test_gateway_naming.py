"""Naming the category without a custom header (issue 26, item 4): a ``/c/CATEGORY/`` path prefix, so
a base URL alone carries it, or a ``metadata.user_id`` of ``tg:CATEGORY:rest``; the header wins when
both are there, and neither prefix goes upstream."""

import json

import anthropic
import httpx2

from tests.app.gatewayparts import LABELS, SCENARIO, start
from tests.helpers import API_KEY, samples, wait_until

POLICY = {"defaults": {"sample_rate": 1.0},
          "categories": {name: {"comparator": {"type": "label", "labels": LABELS}}
                         for name in ("sentiment", "other")}}


def test_a_base_url_names_the_category(stack, tmp_path, simulator, sqlite_url):
    sim = simulator(**SCENARIO)
    stack.configure(policy=POLICY, database_url=sqlite_url, base_url=sim.base_url)
    stack.start_worker(concurrency=4)
    gw = start(stack, tmp_path)
    client = anthropic.Anthropic(base_url=gw.base + "/c/sentiment", api_key=API_KEY, max_retries=0)
    request = {"model": "claude-opus-4-7", "max_tokens": 8, "system": "sentiment: classify",
               "messages": [{"role": "user", "content": "The parcel arrived damaged."}]}
    assert client.messages.create(**request).model == "claude-haiku-4-5"  # routed by the path
    with client.messages.stream(**request) as stream:
        assert stream.get_final_message().model == "claude-haiku-4-5"
    tokens = client.messages.count_tokens(model="claude-opus-4-7", messages=request["messages"])
    assert tokens.input_tokens > 0  # other paths under the prefix reach the API without it
    named = client.messages.create(**request, extra_headers={"x-tierguard-category": "nope-unknown"})
    assert named.model == "claude-opus-4-7"  # the header wins: an unlisted category, the caller's model
    wait_until(lambda: samples(sqlite_url) >= 2, 30, "the path-named calls shadowed")
    # A user id of "tg:CATEGORY:rest" names it too, stripped before the API sees it.
    plain = anthropic.Anthropic(base_url=gw.base, api_key=API_KEY, max_retries=0)
    by_user = plain.messages.create(**request, metadata={"user_id": "tg:sentiment:u-42"})
    assert by_user.model == "claude-haiku-4-5"
    header_wins = plain.messages.create(**request, metadata={"user_id": "tg:other:"},
                                        extra_headers={"x-tierguard-category": "nope-unknown"})
    assert header_wins.model == "claude-opus-4-7"
    sent = [json.loads(r["body"]) for r in httpx2.get(sim.base_url + "/_sim/requests").json()["requests"]
            if r["path"] == "/v1/messages"]
    assert {"user_id": "u-42"} in [b.get("metadata") for b in sent]
    assert all("tg:" not in json.dumps(b) for b in sent)
    wait_until(lambda: samples(sqlite_url) >= 3, 30, "the user-id-named call shadowed")
