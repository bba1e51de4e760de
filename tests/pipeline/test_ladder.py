"""Three tiers on real parts: a failing rung goes to the next that holds (or the reference), probes are
recorded once, the guard climbs one rung, old samples belong to their candidate."""

import os
import signal
import subprocess
import sys
import time

import anthropic
import pytest
import redis
import sqlalchemy as sa
from sqlmodel import select

import tierguard
from tests.helpers import last_json, samples, tg, traffic_totals, wait_until
from tierguard.config import get_settings
from tierguard.contract.job import ShadowJob
from tierguard.pipeline.shadow import probe_rung
from tierguard.policy import parse_policy
from tierguard.store.db import make_engine, session, upgrade
from tierguard.store.tables import Category, RouteChange, Sample

HAIKU, SONNET, OPUS = "claude-haiku-4-5", "claude-sonnet-4-6", "claude-opus-4-7"
LADDER = [HAIKU, SONNET, OPUS]
LABELS = ["ROUTE_A", "ROUTE_B", "ROUTE_C", "ROUTE_D"]
SCENARIO = {"latency_ms": 150, "categories": {"triage": {
    "kind": "label", "labels": LABELS, "agreement": 1.0,
    # Haiku drifts after 250 of its calls: by then Sonnet has ~200 probes, enough to be eligible
    # (all agreeing, the promotion test passes at its 163rd: tests/engine/test_betting.py).
    "models": {HAIKU: {"agreement": 1.0, "drift": {"after": 250, "agreement": 0.2}},
               SONNET: {"agreement": 1.0}}}}}


def policy_for(demote_to):
    return {"models": {"ladder": LADDER},
            "defaults": {"sample_rate": 1.0, "min_samples": 30, "promote_min_samples": 40},
            "categories": {"triage": {"comparator": {"type": "label", "labels": LABELS},
                                      "demote_to": demote_to, "probe_rate": 0.8}}}


def call(client, i, **kw):
    return client.messages.create(category="triage", max_tokens=8, system="triage: route the ticket",
                                  messages=[{"role": "user", "content": f"ticket {i}"}], **kw)


def route_of(url):
    with session(make_engine(url)) as s:
        row = s.get(Category, "triage")
        return row.routed_model if row else None


def changes(url):
    with session(make_engine(url)) as s:
        return list(s.exec(select(RouteChange).where(RouteChange.applied).order_by(RouteChange.id)))


def rows(url):
    with session(make_engine(url)) as s:
        return list(s.exec(select(Sample)))


@pytest.fixture
def closing():
    """Clients closed even when the test fails (an open one would repopulate Redis from its DB)."""
    clients = []
    yield clients.append
    for client in clients:
        client.tierguard_close()


@pytest.mark.parametrize("demote_to, ends_on", [("next", SONNET), ("reference", OPUS)])
def test_a_failing_haiku_ends_on_the_rung_that_holds_takes_a_minute(stack, simulator, postgres_url, tmp_path,
                                                     demote_to, ends_on, closing):
    sim = simulator(**SCENARIO)
    policy = policy_for(demote_to)
    stack.configure(policy=policy, database_url=postgres_url, base_url=sim.base_url, visibility_timeout=5)
    worker = stack.start_worker(concurrency=16)
    client = tierguard.ShadowedAnthropic(anthropic.Anthropic(max_retries=0))
    closing(client)
    for i in range(60):
        call(client, i)
    client.tierguard_flush(5)
    if demote_to == "next":  # killed mid-run: its jobs and probes come back, each recorded once
        time.sleep(0.3)
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
        stack.start_worker(concurrency=16)
    for i in range(60, 600):
        call(client, i)
        if route_of(postgres_url) == ends_on:
            break
    client.tierguard_flush(5)
    wait_until(lambda: route_of(postgres_url) == ends_on, 60, f"triage on {ends_on}")
    [change] = changes(postgres_url)
    assert (change.from_model, change.to_model, change.rule) == (HAIKU, ends_on, "cusum")
    assert change.reason.startswith(f"{HAIKU} fails against the reference, so ")
    assert (SONNET + ", the cheapest rung above it eligible") in change.reason or ends_on == OPUS
    wait_until(lambda: call(client, 399).model == ends_on, 10, "the wrapper on the new route")
    for i in range(400, 440):  # served by the new rung now
        assert call(client, i).model == ends_on
    client.tierguard_flush(5)
    time.sleep(3)
    recorded = rows(postgres_url)
    assert len({x.job_id for x in recorded}) == len(recorded)
    shadows = [x for x in recorded if x.kind == "shadow"]
    probes = {x.job_id: x for x in recorded if x.kind == "probe"}
    parsed = parse_policy(policy)
    expected = set()
    for x in shadows:
        job = ShadowJob(job_id=x.job_id, category="triage", served_model=x.served_model,
                        shadow_model=x.shadow_model, request={"max_tokens": 8, "messages": []},
                        primary_text="")
        if x.error is None and probe_rung(parsed, job):
            expected.add(x.job_id + ":probe")
    assert set(probes) == expected and len(expected) > 20  # every probe once, none twice
    assert {(p.served_model, p.rung) for p in probes.values()} <= {(OPUS, SONNET), (OPUS, HAIKU)}
    status = last_json(tg("status", "--json", env=stack.env_for_cli(), cwd=tmp_path).stdout)
    rungs = status["categories"]["triage"]["rungs"]
    assert list(rungs) == LADDER
    assert rungs[HAIKU]["state"] == "demoted" and rungs[ends_on]["state"] == "serving"
    assert rungs[SONNET]["samples"] > 20 and rungs[HAIKU]["samples"] > 100
    report = last_json(tg("report", "--json", "--out", str(tmp_path / "r.png"), env=stack.env_for_cli(),
                          cwd=tmp_path).stdout)
    assert report["categories"]["triage"]["rungs"][HAIKU] == "demoted"
    opportunities = tg("opportunities", "--json", env=stack.env_for_cli(), cwd=tmp_path).stdout
    [row] = last_json(opportunities)["categories"]
    assert set(row["rungs"]) == {HAIKU, SONNET} and row["rungs"][HAIKU]["state"] == "demoted"
    if ends_on == OPUS:  # sonnet, just below the reference, is promoted first: one rung at a time
        wait_until(lambda: last_json(tg("status", "--json", env=stack.env_for_cli(), cwd=tmp_path).stdout)
                   ["categories"]["triage"]["rungs"][SONNET]["state"] == "eligible", 30, "sonnet eligible")
        refused = tg("promote", "triage", "--to", HAIKU, env=stack.env_for_cli(), cwd=tmp_path, check=False)
        assert refused.returncode != 0 and "not eligible" in refused.stdout + refused.stderr
        promoted = last_json(tg("promote", "triage", "--json", env=stack.env_for_cli(), cwd=tmp_path).stdout)
        assert promoted["route"] == SONNET


def test_the_guard_sends_an_oversized_haiku_request_one_rung_up(simulator, redis_url, sqlite_url):
    # A database of its own: a client a failed test left open repopulates database 0 from its own.
    redis_url = redis_url.rsplit("/", 1)[0] + "/13"
    redis.Redis.from_url(redis_url).flushdb()
    sim = simulator(**SCENARIO)
    policy = parse_policy({**policy_for("reference"),
                           "limits": {HAIKU: {"context_tokens": 2000, "max_output_tokens": 1000}}})
    client = tierguard.ShadowedAnthropic(
        anthropic.Anthropic(base_url=sim.base_url, api_key="sk-test", max_retries=0),
        settings=get_settings(redis_url=redis_url, database_url=sqlite_url), policy=policy)
    assert call(client, 1).model == HAIKU
    big = client.messages.create(category="triage", max_tokens=1500, system="triage: route the ticket",
                                 messages=[{"role": "user", "content": "ticket long"}])
    assert big.model == SONNET  # haiku cannot take 1,500 output tokens; sonnet can
    client.tierguard_close()  # its last traffic report
    counted = traffic_totals(redis.Redis.from_url(redis_url))
    assert counted[("triage", SONNET, "guarded")] == 1 and counted[("triage", SONNET, "calls")] == 1


def test_the_rung_migration_keeps_every_sample_with_its_candidate(postgres_server, redis_url, tmp_path):
    url = postgres_server.create_database("rungs")
    engine = make_engine(url)
    upgrade(engine, "0011")
    with engine.begin() as conn:
        for i in range(30):
            conn.execute(sa.text(
                "INSERT INTO sample (job_id, category, kind, served_model, shadow_model, agree, comparator,"
                " reason, detail, attempts, request_hash, primary_hash, requested_at, created_at) VALUES"
                " (:id, 'legacy', 'shadow', :served, :shadow, true, 'exact', '', '{}', 1, 'h', 'h',"
                " now(), now())"),
                {"id": f"old-{i}", "served": HAIKU if i < 20 else OPUS, "shadow": OPUS if i < 20 else HAIKU})
    upgrade(engine)
    assert samples(url) == 30
    env = {**os.environ, "TIERGUARD_DATABASE_URL": url, "TIERGUARD_REDIS_URL": redis_url,
           "TIERGUARD_POLICY": str(tmp_path / "none.yaml")}
    out = subprocess.run([sys.executable, "-m", "tierguard", "status", "--json"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, check=True).stdout
    rungs = last_json(out)["categories"]["legacy"]["rungs"]
    assert rungs[HAIKU]["samples"] == 30 and list(rungs) == [HAIKU, OPUS]  # two models stay two tiers
