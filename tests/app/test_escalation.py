"""Escalation in the SDK wrapper: a cheap rung's answer that fails its category's checks is replaced
by the reference's before the caller sees it (sync, async, buffered streams); the escalated call
failing hands the caller the original; a sampled escalated call is shadowed as what the caller got."""

import asyncio

import anthropic
import httpx2
from sqlmodel import select

import tierguard
from tests.helpers import API_KEY, wait_until
from tierguard.store.db import make_engine, session
from tierguard.store.tables import Sample

HAIKU, OPUS = "claude-haiku-4-5", "claude-opus-4-7"
LABELS = ["POSITIVE", "NEGATIVE", "NEUTRAL"]
SCENARIO = {"categories": {"sentiment": {
    "kind": "label", "labels": LABELS, "agreement": 1.0,
    "models": {HAIKU: {"agreement": 1.0, "broken": {"rate": 1.0, "kinds": ["invalid"]}}}}}}


def policy(sample_rate=0.0, **category):
    return {"defaults": {"sample_rate": sample_rate},
            "categories": {"sentiment": {"comparator": {"type": "label", "labels": LABELS},
                                         "escalate_on": ["invalid", "refusal"], **category}}}


BODY = {"category": "sentiment", "system": "sentiment: classify", "max_tokens": 16,
        "messages": [{"role": "user", "content": "great product"}]}


def test_a_failing_answer_is_escalated_to_the_reference_sync_and_async(stack, simulator, sqlite_url):
    sim = simulator(**SCENARIO)
    stack.configure(policy=policy(), database_url=sqlite_url, base_url=sim.base_url)
    client = tierguard.ShadowedAnthropic(anthropic.Anthropic(max_retries=0))
    try:
        raw = client.messages.with_raw_response.create(**BODY)
        message = raw.parse()
        assert message.model == OPUS and message.content[0].text in LABELS
        assert raw.headers["x-tierguard-escalated"] == "invalid"
        stats = client.tierguard_stats()
        assert (stats["escalated"], stats["escalated_invalid"]) == (1, 1)
    finally:
        client.tierguard_close()

    async def run():
        aclient = tierguard.AsyncShadowedAnthropic(anthropic.AsyncAnthropic(max_retries=0))
        try:
            got = await aclient.messages.create(**BODY)
            return got, aclient.tierguard_stats()
        finally:
            aclient.tierguard_close()

    got, stats = asyncio.run(run())
    assert got.model == OPUS and got.content[0].text in LABELS and stats["escalated"] == 1


def test_a_policy_without_checks_relays_the_broken_answer_as_before(stack, simulator, sqlite_url):
    sim = simulator(**SCENARIO)
    plain = policy()
    del plain["categories"]["sentiment"]["escalate_on"]
    stack.configure(policy=plain, database_url=sqlite_url, base_url=sim.base_url)
    client = tierguard.ShadowedAnthropic(anthropic.Anthropic(max_retries=0))
    try:
        message = client.messages.create(**BODY)
        assert message.model == HAIKU and message.content[0].text not in LABELS
        assert "escalated" not in client.tierguard_stats()
    finally:
        client.tierguard_close()


def test_streams_are_checked_only_when_buffered(stack, simulator, sqlite_url):
    sim = simulator(**SCENARIO)
    stack.configure(policy=policy(buffer_streams=True), database_url=sqlite_url, base_url=sim.base_url)
    client = tierguard.ShadowedAnthropic(anthropic.Anthropic(max_retries=0))
    try:
        with client.messages.stream(**BODY) as stream:
            texts = list(stream.text_stream)
            final = stream.get_final_message()
        assert final.model == OPUS and "".join(texts) in LABELS
    finally:
        client.tierguard_close()
    stack.configure(policy=policy(), database_url=sqlite_url, base_url=sim.base_url)
    client = tierguard.ShadowedAnthropic(anthropic.Anthropic(max_retries=0))
    try:
        with client.messages.stream(**BODY) as stream:  # not buffered: relayed as it comes, unchecked
            final = stream.get_final_message()
        assert final.model == HAIKU and final.content[0].text not in LABELS
    finally:
        client.tierguard_close()


def test_the_escalated_call_failing_hands_the_caller_the_original(stack, simulator, sqlite_url):
    sim = simulator(**SCENARIO)
    stack.configure(policy=policy(), database_url=sqlite_url, base_url=sim.base_url)
    httpx2.post(f"{sim.base_url}/_sim/buckets", json={"model": OPUS, "requests_per_minute": 1})
    plain = anthropic.Anthropic(base_url=sim.base_url, api_key=API_KEY, max_retries=0)
    plain.messages.create(**{k: v for k, v in BODY.items() if k != "category"}, model=OPUS)  # its one call
    client = tierguard.ShadowedAnthropic(anthropic.Anthropic(max_retries=0))
    try:
        message = client.messages.create(**BODY)
        assert message.model == HAIKU and message.content[0].text not in LABELS  # the original
        stats = client.tierguard_stats()
        assert stats["escalation_failed"] == 1 and "escalated" not in stats
    finally:
        client.tierguard_close()


def test_a_sampled_escalated_call_is_shadowed_as_the_answer_the_caller_got(stack, simulator, sqlite_url):
    sim = simulator(**SCENARIO)
    stack.configure(policy=policy(sample_rate=1.0), database_url=sqlite_url, base_url=sim.base_url)
    stack.start_worker(concurrency=2)
    client = tierguard.ShadowedAnthropic(anthropic.Anthropic(max_retries=0))
    try:
        assert client.messages.create(**BODY).model == OPUS
        assert client.tierguard_flush(5)
    finally:
        client.tierguard_close()
    engine = make_engine(sqlite_url)

    def rows():
        with session(engine) as s:
            return list(s.exec(select(Sample)))

    wait_until(lambda: len(rows()) == 1, 30, "the escalated call's sample")
    [row] = rows()
    # What the caller got (the reference's answer), shadowed to the candidate it replaced.
    assert (row.served_model, row.shadow_model) == (OPUS, HAIKU) and row.agree is False


def test_the_gateway_escalates_json_and_buffered_streams_and_marks_them(stack, simulator, sqlite_url):
    sim = simulator(**SCENARIO)
    stack.configure(policy=policy(sample_rate=1.0, buffer_streams=True), database_url=sqlite_url,
                    base_url=sim.base_url)
    stack.start_worker(concurrency=2)
    base = stack.start_gateway()
    client = anthropic.Anthropic(base_url=base, api_key=API_KEY, max_retries=0,
                                 default_headers={"x-tierguard-category": "sentiment"})
    body = {**{k: v for k, v in BODY.items() if k != "category"}, "model": HAIKU}
    raw = client.messages.with_raw_response.create(**body)
    assert raw.headers["x-tierguard-escalated"] == "invalid"
    assert raw.parse().model == OPUS and raw.parse().content[0].text in LABELS
    with client.messages.stream(**body) as stream:
        final = stream.get_final_message()
    assert final.model == OPUS and final.content[0].text in LABELS
    stats = httpx2.get(base + "/tierguard/stats").json()
    assert stats["escalated"] == 2 and stats["escalated_invalid"] == 2
    engine = make_engine(sqlite_url)

    def rows():
        with session(engine) as s:
            return list(s.exec(select(Sample)))

    wait_until(lambda: len(rows()) == 2, 30, "both escalated calls' samples")
    assert {(r.served_model, r.shadow_model) for r in rows()} == {(OPUS, HAIKU)}


def test_where_a_failing_answer_goes():
    from tierguard.app.escalation import failure, target
    from tierguard.policy import parse_policy

    ladder = ["claude-haiku-4-5", "claude-sonnet-4-6", OPUS]
    pol = parse_policy({"models": {"ladder": ladder}, "categories": {
        "up": {"escalate_on": ["empty"], "escalate_to": "next"}, "ref": {"escalate_on": ["empty"]},
        "off": {}}})
    assert target(pol.category("up"), HAIKU) == "claude-sonnet-4-6"
    assert target(pol.category("up"), "claude-sonnet-4-6") == OPUS
    assert target(pol.category("ref"), HAIKU) == OPUS
    assert target(pol.category("ref"), OPUS) is None  # the reference's answer is never escalated
    assert target(pol.category("off"), HAIKU) is None and target(None, HAIKU) is None
    assert failure(pol.category("ref"), b'{"content": [], "stop_reason": "end_turn"}').reason == "empty"
    assert failure(pol.category("ref"), b"not json").reason == "invalid"


def test_a_json_answer_read_as_a_stream_is_checked_too(stack, simulator, sqlite_url):
    sim = simulator(**SCENARIO)
    stack.configure(policy=policy(), database_url=sqlite_url, base_url=sim.base_url)
    client = tierguard.ShadowedAnthropic(anthropic.Anthropic(max_retries=0))
    try:  # with_streaming_response: the SDK reads a JSON answer through httpx's stream
        with client.messages.with_streaming_response.create(**BODY) as response:
            message = response.parse()
        assert message.model == OPUS and response.headers["x-tierguard-escalated"] == "invalid"
    finally:
        client.tierguard_close()


def test_escalated_calls_spend_is_counted_apart(stack, simulator, sqlite_url, redis_url):
    import datetime as dt

    import redis

    from tierguard.ops.costs import costs
    from tierguard.policy import parse_policy
    from tierguard.store import traffic

    sim = simulator(**SCENARIO)
    stack.configure(policy=policy(), database_url=sqlite_url, base_url=sim.base_url)
    client = tierguard.ShadowedAnthropic(anthropic.Anthropic(max_retries=0))
    try:
        got = [client.messages.with_raw_response.create(**BODY).parse() for _ in range(3)]
    finally:
        client.tierguard_close()
    assert {m.model for m in got} == {OPUS}
    pol, engine = parse_policy(policy()), make_engine(sqlite_url)
    now = dt.datetime.now(dt.UTC)
    traffic.fold(engine, redis.Redis.from_url(redis_url), now + dt.timedelta(minutes=3), pol)
    out = costs(engine, pol, now - dt.timedelta(hours=1), now)["categories"]["sentiment"]
    escalated = sum(pol.cost_usd(OPUS, m.usage.input_tokens, m.usage.output_tokens) for m in got)
    assert out["escalated_calls"] == 3 and out["calls"] == 6  # the cheap answers were paid for too
    assert abs(out["escalated_usd"] - escalated) < 1e-9 and out["production_usd"] > escalated
    assert out["savings_usd"] < 0  # every cheap answer was paid for and then replaced


def test_the_gateway_relays_an_answer_too_long_to_check_unchecked(stack, simulator, sqlite_url, tmp_path):
    from tests.app.gatewayparts import start

    sim = simulator(**SCENARIO)
    stack.configure(policy=policy(buffer_streams=True), database_url=sqlite_url, base_url=sim.base_url)
    gw = start(stack, tmp_path, TIERGUARD_STREAM_ASSEMBLY_MAX="300")  # shorter than a whole stream
    client = anthropic.Anthropic(base_url=gw.base, api_key=API_KEY, max_retries=0,
                                 default_headers={"x-tierguard-category": "sentiment"})
    body = {**{k: v for k, v in BODY.items() if k != "category"}, "model": HAIKU}
    with client.messages.stream(**body) as stream:  # not held whole: relayed as it comes
        final = stream.get_final_message()
    assert final.model == HAIKU and final.content[0].text not in LABELS
    message = client.messages.create(**body)  # a JSON answer within the limit is still checked
    assert message.model == OPUS
    stats = gw.stats()
    assert stats["checked_too_long"] == 1 and stats["escalated"] == 1 and not gw.errors()
