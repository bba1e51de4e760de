"""A shadow is the request production sent: snapshots, sentinels, headers, unlisted categories,
clients tierguard cannot route, and jobs too large for a broker message (issue 23)."""

import asyncio
import base64
import json

import anthropic
import httpx2
import redis

import tierguard
from tests.app.test_client import SCENARIO, queued_jobs
from tests.helpers import API_KEY
from tierguard.app import snapshot
from tierguard.config import get_settings
from tierguard.contract import keys
from tierguard.policy import parse_policy
from tierguard.routing.routes import REDIS_KEY

LISTED = {"defaults": {"sample_rate": 1.0},
          "categories": {"sentiment": {"comparator": {"type": "label", "labels": ["POSITIVE", "NEGATIVE"]}}}}


def wrapped(server, redis_url, sqlite_url, policy=None, client=None, **settings):
    sdk = client or anthropic.Anthropic(base_url=server.base_url, api_key=API_KEY)
    return tierguard.ShadowedAnthropic(sdk, settings=get_settings(
        redis_url=redis_url, database_url=sqlite_url, route_ttl=0.05, **settings),
        policy=parse_policy(policy or LISTED))


def test_a_chat_loop_shadows_each_turn_as_it_was_sent(simulator, redis_url, sqlite_url):
    client = wrapped(simulator(**SCENARIO), redis_url, sqlite_url)
    messages = [{"role": "user", "content": [{"type": "text", "text": "turn 0"}]}]
    for turn in range(1, 5):  # the usual loop: one list, appended to (and its parts mutated)
        answer = client.messages.create(category="sentiment", max_tokens=8, messages=messages)
        messages.append({"role": "assistant", "content": answer.content[0].text})
        messages[0]["content"][0]["text"] += " (edited)"
        messages.append({"role": "user", "content": f"turn {turn}"})
    assert client.tierguard_flush()
    jobs = queued_jobs(redis_url)
    assert [len(j["request"]["messages"]) for j in jobs] == [1, 3, 5, 7]
    assert [j["request"]["messages"][0]["content"][0]["text"].count("(edited)") for j in jobs] == [0, 1, 2, 3]
    client.tierguard_close()


def test_production_requests_carry_the_callers_own_user_agent(simulator, redis_url, sqlite_url):
    """The SDK names its user agent after the client's class: the wrapper's class must not show."""
    sim = simulator(**SCENARIO)
    bare = anthropic.Anthropic(base_url=sim.base_url, api_key=API_KEY)
    client = wrapped(sim, redis_url, sqlite_url, policy={"defaults": {"sample_rate": 0.0}, "categories": {
        "sentiment": LISTED["categories"]["sentiment"]}})
    sdk = anthropic.AsyncAnthropic(base_url=sim.base_url, api_key=API_KEY)
    asynced = tierguard.AsyncShadowedAnthropic(sdk, settings=client.tierguard_core.settings)
    request = {"max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    bare.messages.create(model="claude-opus-4-7", **request)
    client.messages.create(category="sentiment", **request)
    client.with_options(timeout=30).messages.create(category="sentiment", **request)
    asyncio.run(asynced.messages.create(model="claude-opus-4-7", **request))
    agents = [h["user-agent"] for h in httpx2.get(sim.base_url + "/_sim/stats").json()["recent_headers"][-4:]]
    version = anthropic.__version__
    assert agents == [f"Anthropic/Python {version}"] * 3 + [f"AsyncAnthropic/Python {version}"], agents
    client.tierguard_close()
    asynced.tierguard_close()


def test_sentinels_are_dropped_and_shaping_headers_and_extra_body_travel(simulator, redis_url,
                                                                          sqlite_url):
    server = simulator(**SCENARIO)
    sdk = anthropic.Anthropic(base_url=server.base_url, api_key=API_KEY,
                              default_headers={"anthropic-beta": "client-default-beta"})
    client = wrapped(server, redis_url, sqlite_url, client=sdk)
    client.messages.create(category="sentiment", max_tokens=8, system=anthropic.NOT_GIVEN,
                           stop_sequences=anthropic.omit, messages=[{"role": "user", "content": "hi"}],
                           extra_headers={"anthropic-beta": "context-management-2025-06-27",
                                          "x-api-key": "sk-ant-secret", "authorization": "Bearer x"},
                           extra_body={"temperature": 0.2, "context_management": {"edits": []}},
                           timeout=30)
    assert client.tierguard_flush()
    [job] = queued_jobs(redis_url)
    assert job["request"] == {"max_tokens": 8, "messages": [{"role": "user", "content": "hi"}],
                              "temperature": 0.2, "context_management": {"edits": []}}
    assert job["headers"] == {"anthropic-beta": "context-management-2025-06-27"}  # no credentials
    client.tierguard_close()


def test_a_warm_category_shadows_each_call_with_the_betas_it_was_sent_with(simulator, redis_url,
                                                                           sqlite_url):
    # The first call of a category takes the full path; the next ones its plan (the quick path).
    server = simulator(**SCENARIO)
    client = tierguard.ShadowedAnthropic(
        anthropic.Anthropic(base_url=server.base_url, api_key=API_KEY),
        settings=get_settings(redis_url=redis_url, database_url=sqlite_url, route_ttl=60),
        policy=parse_policy(LISTED))
    for beta in ("beta-one", "beta-two", "beta-three"):
        client.messages.create(category="sentiment", max_tokens=8, extra_headers={"anthropic-beta": beta},
                               messages=[{"role": "user", "content": beta}])
    assert client.tierguard_flush()
    assert [job["headers"] for job in queued_jobs(redis_url)] == [
        {"anthropic-beta": b} for b in ("beta-one", "beta-two", "beta-three")]
    client.tierguard_close()


def test_snapshot_helpers():
    kwargs = {"model": "m", "max_tokens": 5, "messages": ({"role": "user", "content": "é"},),
              "temperature": anthropic.NOT_GIVEN, "stream": True, "betas": ["a-1", "b-2"],
              "extra_query": {"q": 1}, "extra_body": {"top_k": 3}}
    text = snapshot.take(kwargs)
    assert "é" in text  # kept as sent, not escaped
    assert snapshot.job_request(text) == {"max_tokens": 5, "messages": [{"role": "user", "content": "é"}],
                                          "top_k": 3}
    assert snapshot.shaping_headers(kwargs, {"Anthropic-Beta": "x"}) == {"anthropic-beta": "a-1,b-2"}
    assert snapshot.shaping_headers({}, {"X-Api-Key": "k"}) is None


def test_an_unlisted_category_is_served_with_the_callers_model_and_shadowed(simulator, redis_url,
                                                                             sqlite_url):
    client = wrapped(simulator(**SCENARIO), redis_url, sqlite_url)
    msg = client.messages.create(category="sentimnet", model="claude-opus-4-7", max_tokens=8,
                                 messages=[{"role": "user", "content": "hi"}])
    assert msg.model == "claude-opus-4-7"  # a misspelling is never a silent downgrade
    assert client.messages.create(category="sentimnet", max_tokens=8, messages=[
        {"role": "user", "content": "no model"}]).model == "claude-opus-4-7"  # the reference
    # A caller's model off the ladder is served as named, counted, and not shadowed.
    assert client.messages.create(category="sentimnet", model="claude-sonnet-4-6", max_tokens=8,
                                  messages=[{"role": "user", "content": "x"}]).model == "claude-sonnet-4-6"
    assert client.tierguard_flush()
    jobs = queued_jobs(redis_url)
    assert [(j["category"], j["served_model"], j["shadow_model"]) for j in jobs] == [
        ("sentimnet", "claude-opus-4-7", "claude-haiku-4-5")] * 2
    assert client.tierguard_stats()["unshadowed_off_ladder"] == 1
    # Moved on purpose (promote, evaluate --apply: a version above 1): the route is followed.
    redis.Redis.from_url(redis_url).hset(REDIS_KEY, "sentimnet", "claude-haiku-4-5|2")
    client.tierguard_core.routes.refresh()
    assert client.messages.create(category="sentimnet", model="claude-opus-4-7", max_tokens=8,
                                  messages=[{"role": "user", "content": "x"}]).model == "claude-haiku-4-5"
    client.tierguard_close()


def test_no_policy_file_reroutes_nothing_and_start_on_cheapest_keeps_the_old_way(simulator, redis_url,
                                                                                 sqlite_url, tmp_path):
    server = simulator(**SCENARIO)
    sdk = anthropic.Anthropic(base_url=server.base_url, api_key=API_KEY)
    bare = tierguard.ShadowedAnthropic(sdk, settings=get_settings(
        redis_url=redis_url, database_url=sqlite_url, policy=str(tmp_path / "absent.yaml")))
    for model in ("claude-opus-4-7", "claude-haiku-4-5"):
        assert bare.messages.create(category="anything", model=model, max_tokens=8,
                                    messages=[{"role": "user", "content": "x"}]).model == model
    bare.tierguard_close()
    old_way = wrapped(server, redis_url, sqlite_url,
                      policy={**LISTED, "unknown_categories": {"start_on": "cheapest"}})
    assert old_way.messages.create(category="sentimnet", model="claude-opus-4-7", max_tokens=8,
                                   messages=[{"role": "user", "content": "x"}]).model == "claude-haiku-4-5"
    old_way.tierguard_close()


def test_bedrock_and_vertex_clients_are_routed_with_their_platforms_ids(simulator, redis_url, sqlite_url,
                                                                        monkeypatch):
    server = simulator(**SCENARIO)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "a")  # SigV4-signed, as the SDK signs with real keys
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "b")
    bedrock = anthropic.AnthropicBedrock(aws_region="us-east-1", base_url=server.base_url)
    vertex = anthropic.AnthropicVertex(region="us-east5", project_id="p", access_token="t",
                                       base_url=server.base_url + "/v1")
    cases = ((bedrock, "global.anthropic.claude-opus-4-7", "global.anthropic.claude-haiku-4-5-20251001-v1:0"),
             (vertex, "claude-opus-4-7", "claude-haiku-4-5@20251001"))
    for sdk, asked, routed in cases:
        redis.Redis.from_url(redis_url).flushdb()
        client = wrapped(server, redis_url, sqlite_url, client=sdk)
        assert isinstance(client, type(sdk))
        assert isinstance(client.beta, type(sdk.beta))  # the platform's own beta resources, kept
        msg = client.messages.create(category="sentiment", model=asked, max_tokens=8,
                                     messages=[{"role": "user", "content": "hi"}])
        assert msg.model == routed  # the candidate's id on the platform, in the platform's path
        with client.messages.stream(category="sentiment", model=asked, max_tokens=8,
                                    messages=[{"role": "user", "content": "hi"}]) as stream:
            assert stream.get_final_message().model == routed  # event-stream frames on Bedrock
        assert client.tierguard_flush()
        jobs = queued_jobs(redis_url)
        assert [j["served_model"] for j in jobs] == ["claude-haiku-4-5"] * 2
        assert all("anthropic_version" not in j["request"] and j["request"]["max_tokens"] == 8 for j in jobs)
        assert client.tierguard_stats().get("internal_errors", 0) == 0
        unknown = client.messages.create(category="sentiment", model="claude-unknown@1", max_tokens=8,
                                         messages=[{"role": "user", "content": "hi"}])
        assert unknown.model == "claude-unknown@1"  # an id no model maps to: sent as it is, counted
        assert client.tierguard_stats()["uncategorized_unknown_model_id"] == 1
        client.tierguard_close()


def test_a_large_job_travels_by_reference(simulator, redis_url, sqlite_url):
    client = wrapped(simulator(**SCENARIO), redis_url, sqlite_url)
    image = base64.b64encode(b"\x89PNG" + b"\0" * 5_000_000).decode()
    content = [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": image}},
               {"type": "text", "text": "classify"}]
    client.messages.create(category="sentiment", max_tokens=8, messages=[{"role": "user",
                                                                          "content": content}])
    assert client.tierguard_flush()
    r = redis.Redis.from_url(redis_url)
    assert max(len(m) for m in r.lrange("tierguard", 0, -1)) < 10_000  # the broker carries no image
    [job] = queued_jobs(redis_url)
    assert job["request"] == {} and job["payload_ref"] == keys.JOB_PAYLOAD.format(job_id=job["job_id"])
    stored = json.loads(r.get(job["payload_ref"]))
    assert stored["request"]["messages"][0]["content"] == content
    assert 0 < r.ttl(job["payload_ref"]) <= 86_400
    client.tierguard_close()


def test_unlisted_categories_start_on_the_reference_and_are_never_auto_promoted():
    policy = parse_policy({"defaults": {"auto_promote": True}})
    unlisted = policy.category("sentimnet")
    assert unlisted.follows_caller and unlisted.initial_route == "claude-opus-4-7"
    assert not unlisted.auto_promote
    old = parse_policy({"defaults": {"auto_promote": True}, "unknown_categories": {"start_on": "cheapest"}})
    assert old.category("sentimnet").initial_route == "claude-haiku-4-5" and old.category("x").auto_promote
    assert parse_policy({"unknown_categories": "pass_through"}).unknown_categories.mode == "pass_through"


def test_a_tracked_category_the_policy_then_lists_starts_where_the_policy_says(sqlite_url):
    from sqlmodel import select

    from tierguard.routing.routes import ensure_categories, lock_category
    from tierguard.store.db import make_engine, session, upgrade
    from tierguard.store.tables import Category, RouteChange

    engine = make_engine(sqlite_url)
    upgrade(engine)
    with session(engine) as s:  # what the worker made of it while unlisted: its reference, version 1
        lock_category(s, parse_policy({}).category("sentimnet"))
        s.commit()
    ensure_categories(engine, parse_policy({"categories": {"sentimnet": {}}}))
    with session(engine) as s:
        row = s.get(Category, "sentimnet")
        [change] = s.exec(select(RouteChange)).all()
    assert (row.routed_model, row.version) == ("claude-haiku-4-5", 2)
    assert change.rule == "policy" and "start_on: cheapest" in change.reason
    ensure_categories(engine, parse_policy({"categories": {"sentimnet": {}}}))  # once only
    with session(engine) as s:
        assert len(s.exec(select(RouteChange)).all()) == 1


def test_nested_sentinels_are_dropped_and_a_worker_sends_only_shaping_headers():
    from tierguard.pipeline.calls import sdk_params

    body = snapshot.job_request(snapshot.take({"max_tokens": 5, "messages": [], "tool_choice": {
        "type": "auto", "disable_parallel_tool_use": anthropic.NOT_GIVEN}}))
    assert body["tool_choice"] == {"type": "auto"}
    params = sdk_params({"model": "m", "max_tokens": 5, "messages": [], "temperature": 0.1},
                        {"anthropic-beta": "b", "x-api-key": "stolen", "anthropic-version": "1999"})
    assert params == {"model": "m", "max_tokens": 5, "messages": [], "extra_body": {"temperature": 0.1},
                      "extra_headers": {"anthropic-beta": "b"}}


def test_background_threads_start_on_first_use_not_at_construction(simulator, redis_url, sqlite_url):
    import threading

    def ours():
        return sorted(t.name for t in threading.enumerate() if t.name.startswith("tierguard-"))

    server = simulator(**SCENARIO)
    before = set(ours())
    client = wrapped(server, redis_url, sqlite_url)
    assert set(ours()) == before  # a preforking master builds the client and starts nothing
    client.messages.create(category="sentiment", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    assert {"tierguard-publisher", "tierguard-routes"} <= set(ours())
    client.tierguard_close()


def test_many_large_jobs_are_spread_over_messages_of_bounded_size(simulator, redis_url, sqlite_url):
    client = wrapped(simulator(**SCENARIO), redis_url, sqlite_url, job_inline_max=400_000)
    text = "x" * 300_000  # under the inline limit: each job travels in its message
    for i in range(8):
        client.messages.create(category="sentiment", max_tokens=8,
                               messages=[{"role": "user", "content": f"{i} {text}"}])
    assert client.tierguard_flush()
    messages = redis.Redis.from_url(redis_url).lrange("tierguard", 0, -1)
    assert len(queued_jobs(redis_url)) == 8 and len(messages) >= 3
    assert max(len(m) for m in messages) < 2_000_000  # never all eight (and their base64) in one
    client.tierguard_close()
