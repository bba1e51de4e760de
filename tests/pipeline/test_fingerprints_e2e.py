"""Fingerprints end to end on real parts: the wrapper and the gateway → Redis → a Celery worker →
the simulator over HTTP → SQLite. A system prompt that changes mid-run restarts the promotion
evidence once (a few odd calls never do); a new snapshot behind the served alias does too, named;
every sample carries the prompt fingerprint and both snapshots, from every producer."""

import anthropic
import httpx2
import sqlalchemy as sa
from sqlmodel import select

import tierguard
from tests.helpers import API_KEY, LABELS, last_json, samples, tg, wait_until
from tierguard.contract.fingerprint import prompt_fingerprint
from tierguard.store.db import make_engine, session
from tierguard.store.tables import Category, Event, Sample

OPUS, HAIKU = "claude-opus-4-7", "claude-haiku-4-5"
OPUS_1, OPUS_2, HAIKU_1 = "claude-opus-4-7-20260101", "claude-opus-4-7-20270101", "claude-haiku-4-5-20251001"
A = "sentiment: answer POSITIVE, NEGATIVE or NEUTRAL"
B = "sentiment: answer with one label, POSITIVE, NEGATIVE or NEUTRAL"
ODD = "sentiment (trial prompt): answer POSITIVE, NEGATIVE or NEUTRAL"
SCENARIO = {"seed": 5, "snapshots": {OPUS: OPUS_1, HAIKU: HAIKU_1},
            "categories": {"sentiment": {"kind": "label", "labels": LABELS, "agreement": 1.0}}}
POLICY = {"defaults": {"sample_rate": 1.0, "promote_min_samples": 1000},
          "categories": {"sentiment": {"comparator": {"type": "label", "labels": LABELS},
                                       "start_on": "reference", "sampling": "adaptive",
                                       "sample_rate_min": 0.5, "sample_rate_max": 1.0}}}


def calls(client, url, systems, start):
    for i, system in enumerate(systems):
        client.messages.create(category="sentiment", max_tokens=8, system=system,
                               messages=[{"role": "user", "content": f"review {start + i}"}])
    assert client.tierguard_flush(30)
    total = start + len(systems)
    wait_until(lambda: samples(url) >= total, 60, f"{total} samples")
    return total


def resets(url):
    with session(make_engine(url)) as s:
        return [e.summary for e in s.exec(select(Event).where(Event.kind == "evidence_reset")
                                          .order_by(Event.id))]


def promotion_samples(url):
    with session(make_engine(url)) as s:
        row = s.exec(select(Category).where(Category.name == "sentiment")).one()
        assert row.detector_state["dir"] == "promote"
        return row.detector_state["n"]


def test_a_prompt_change_and_a_new_snapshot_each_reset_once(stack, simulator, sqlite_url, tmp_path):
    sim = simulator(**SCENARIO)
    stack.configure(policy=POLICY, database_url=sqlite_url, base_url=sim.base_url)
    stack.start_worker(concurrency=8)
    client = tierguard.ShadowedAnthropic(anthropic.Anthropic(max_retries=0))
    n = calls(client, sqlite_url, [A] * 60, 0)
    n = calls(client, sqlite_url, [ODD if i % 12 == 5 else A for i in range(60)], n)  # 5 odd calls
    assert resets(sqlite_url) == [] and promotion_samples(sqlite_url) == 120

    n = calls(client, sqlite_url, [B] * 45, n)
    old, new = prompt_fingerprint({"system": A}), prompt_fingerprint({"system": B})
    assert resets(sqlite_url) == [f"sentiment: evidence restarts: prompt fingerprint {old} -> {new}"]
    assert promotion_samples(sqlite_url) < 45  # restarted within the B calls

    httpx2.post(sim.base_url + "/_sim/script", json={"snapshots": {OPUS: OPUS_2}}).raise_for_status()
    n = calls(client, sqlite_url, [B] * 45, n)
    assert resets(sqlite_url)[1:] == [f"sentiment: evidence restarts: {OPUS} snapshot {OPUS_1} -> {OPUS_2}"]
    assert promotion_samples(sqlite_url) < 45

    # Every producer's job carries the served snapshot: a wrapper stream, the gateway (JSON, stream, chat).
    with client.messages.stream(category="sentiment", max_tokens=8, system=B,
                                messages=[{"role": "user", "content": "streamed"}]) as s:
        s.get_final_message()
    assert client.tierguard_flush(30)
    base = stack.start_gateway()
    gw = anthropic.Anthropic(base_url=base, api_key=API_KEY, max_retries=0,
                             default_headers={"x-tierguard-category": "sentiment"})
    gw.messages.create(model=OPUS, max_tokens=8, system=B, messages=[{"role": "user", "content": "gw"}])
    with gw.messages.stream(model=OPUS, max_tokens=8, system=B,
                            messages=[{"role": "user", "content": "gw stream"}]) as s:
        s.get_final_message()
    chat = httpx2.post(base + "/v1/chat/completions", headers={"x-tierguard-category": "sentiment",
                                                               "authorization": f"Bearer {API_KEY}"},
                       json={"model": OPUS, "max_tokens": 8, "messages": [
                           {"role": "system", "content": B}, {"role": "user", "content": "chat"}]})
    assert chat.status_code == 200 and chat.json()["model"] == OPUS_2
    wait_until(lambda: samples(sqlite_url) == n + 4, 60, f"{n + 4} samples")
    client.tierguard_close()

    with session(make_engine(sqlite_url)) as s:
        rows = s.execute(sa.select(Sample.prompt_fingerprint, Sample.served_snapshot,
                                   Sample.shadow_snapshot, sa.func.count())
                         .group_by(Sample.prompt_fingerprint, Sample.served_snapshot,
                                   Sample.shadow_snapshot)).all()
    odd = prompt_fingerprint({"system": ODD})
    assert sorted(rows) == sorted([(old, OPUS_1, HAIKU_1, 115), (odd, OPUS_1, HAIKU_1, 5),
                                   (new, OPUS_1, HAIKU_1, 45), (new, OPUS_2, HAIKU_1, 45 + 4)])
    assert len(resets(sqlite_url)) == 2  # the last four calls changed nothing

    env = stack.env_for_cli()
    status = last_json(tg("status", "--json", env=env, cwd=tmp_path).stdout)["categories"]["sentiment"]
    assert status["fingerprint"]["prompt"] == new and status["fingerprint"]["served_snapshot"] == OPUS_2
    assert status["fingerprint"]["since"]
    assert status["sample_rate"] == 1.0
    reason = status["sample_rate_reason"]
    assert reason.startswith("evidence reset ") and reason.endswith(f"({OPUS} snapshot {OPUS_1} -> {OPUS_2})")
    history = last_json(tg("history", "sentiment", "--json", env=env, cwd=tmp_path).stdout)
    assert [r["summary"] for r in history["resets"]] == list(reversed(resets(sqlite_url)))
