"""Sentinels on real parts: known answers through every rung of a category (the simulator over HTTP,
SQLite and PostgreSQL, Redis locks), baselines per snapshot, `sentinel_failed` once per failure."""

import datetime as dt
import json
import os
import time
import uuid

import anthropic
import pytest
import redis
import sqlalchemy as sa
from sqlmodel import select

from tests.helpers import API_KEY, last_json, tg, wait_until
from tierguard.compare import Verdict
from tierguard.contract import keys
from tierguard.contract.broker import SENTINELS_TASK, beat_entries
from tierguard.contract.job import ShadowJob
from tierguard.errors import ConfigError, SentinelError
from tierguard.ops.costs import costs
from tierguard.ops.status import category_status
from tierguard.pipeline.baselines import Score, judge
from tierguard.pipeline.calls import Answer
from tierguard.pipeline.locks import held
from tierguard.pipeline.recorder import record
from tierguard.pipeline.sentinels import due, read_sentinels, run_category, run_due, run_locked
from tierguard.policy import load_policy, parse_policy
from tierguard.sim.models import Scenario, Simulator
from tierguard.store.db import make_engine, session, upgrade, utcnow
from tierguard.store.tables import Category, Event, RouteChange, Sample, SentinelBaseline, SentinelRun

LABELS = ["POSITIVE", "NEGATIVE", "NEUTRAL"]
HAIKU, SONNET, OPUS = "claude-haiku-4-5", "claude-sonnet-4-6", "claude-opus-4-7"
LADDER = [HAIKU, SONNET, OPUS]
PRICES = {HAIKU: {"input": 1.0, "output": 5.0}, SONNET: {"input": 3.0, "output": 15.0},
          OPUS: {"input": 5.0, "output": 25.0}}
LABEL = {"type": "label", "labels": LABELS}


def scenario(**categories):
    return {"seed": 11, "categories": {name: {"kind": "label", "labels": LABELS, **spec}
                                       for name, spec in categories.items()}}


def write_sentinels(path, scn, category, n=40):
    """``n`` cases with the reference's (noise-free) answer as ``expected``."""
    sim = Simulator(Scenario.from_dict(scn))
    lines = []
    for i in range(n):
        body = {"system": f"{category}: classify the message", "max_tokens": 8,
                "messages": [{"role": "user", "content": f"sentinel case {i}"}]}
        lines.append(json.dumps({**body, "expected": sim.answer({**body, "model": OPUS})[1]}))
    path.write_text("\n".join(lines) + "\n")
    return path


# --- the rule ---------------------------------------------------------------------------------


def test_the_baseline_rule():
    first = judge(Score(OPUS, "opus-1", 0.9, 40, 40), None, None, 0.05)
    assert first.new_baseline and not first.failed and first.baseline == 0.9
    same = judge(Score(OPUS, "opus-1", 0.85, 40, 40), 0.9, None, 0.05)  # exactly the tolerance: passes
    assert not same.failed and not same.new_baseline and same.baseline == 0.9
    low = judge(Score(OPUS, "opus-1", 0.825, 40, 40), 0.9, None, 0.05)
    assert low.failed and "82.5%" in low.reason and "90.0%" in low.reason and "opus-1" in low.reason
    # A new snapshot is held to the previous one's baseline; its own only when it passes.
    moved = judge(Score(OPUS, "opus-2", 0.8, 40, 40), None, ("opus-1", 1.0), 0.05)
    assert moved.failed and not moved.new_baseline and moved.baseline_snapshot == "opus-1"
    assert "new snapshot opus-2" in moved.reason and "on opus-1" in moved.reason
    passed = judge(Score(OPUS, "opus-2", 0.97, 40, 40), None, ("opus-1", 1.0), 0.05)
    assert not passed.failed and passed.new_baseline
    nothing = judge(Score(OPUS, "opus-2", None, 40, 0), 1.0, None, 0.05)  # every call failed
    assert not nothing.failed and not nothing.new_baseline


# --- the policy -------------------------------------------------------------------------------


def test_sentinel_settings_are_checked_field_by_field(tmp_path, sqlite_url, redis_url):
    bad = {"categories": {"a": {"sentinels": {"file": "a.jsonl", "tolerance": 1.5}},
                          "b": {"sentinels": {"file": "b.jsonl", "every_hours": 0}},
                          "c": {"sentinels": {"every_hours": 2}},
                          "d": {"sentinels": {"file": "d.jsonl", "evry_hours": 2}}}}
    with pytest.raises(ConfigError) as err:
        parse_policy(bad)
    assert sorted(err.value.problems) == [
        "categories.a.sentinels.tolerance: Input should be less than or equal to 1",
        "categories.b.sentinels.every_hours: Input should be greater than 0",
        "categories.c.sentinels.file: Field required",
        "categories.d.sentinels.evry_hours: unknown field"]
    # Relative files start at the policy file's folder; defaults give every listed category theirs.
    (tmp_path / "here.jsonl").write_text("")
    policy_file = tmp_path / "tierguard.yaml"
    policy_file.write_text(json.dumps({
        "defaults": {"sentinels": {"file": "here.jsonl"}},
        "categories": {"a": {}, "b": {"sentinels": {"file": "sub/gone.jsonl", "every_hours": 6}},
                       "c": {"sentinels": None}}}))
    policy = load_policy(policy_file)
    assert policy.sentinel_file("a") == tmp_path / "here.jsonl"
    b = policy.category("b").sentinels
    assert b.every_hours == 6 and b.tolerance == 0.05
    env = {**os.environ, "TIERGUARD_POLICY": str(policy_file)}
    done = tg("policy", "check", str(policy_file), "--json", env=env, cwd="/", check=False)
    assert done.returncode == 1
    assert last_json(done.stdout)["problems"] == [
        f"categories.b.sentinels.file: {tmp_path / 'sub' / 'gone.jsonl'}: no such file"]
    (tmp_path / "cases.jsonl").write_text('{"messages": [{"role": "user", "content": "x"}]}\n')
    with pytest.raises(SentinelError, match=r"cases.jsonl: line 1: needs 'expected'"):
        read_sentinels(tmp_path / "cases.jsonl")


# --- a run ------------------------------------------------------------------------------------


def shadow_results(engine, policy, category, n=12):
    """Live evidence before the sentinels run: candidate vs reference, mostly agreeing."""
    for i in range(n):
        job = ShadowJob(job_id=uuid.uuid4().hex, category=category, served_model=HAIKU, shadow_model=OPUS,
                        request={"max_tokens": 8, "messages": [{"role": "user", "content": str(i)}]},
                        primary_text="POSITIVE", primary_input_tokens=10, primary_output_tokens=1)
        record(engine, None, policy, job, Answer("POSITIVE", 10, 1, 5.0), Verdict(i % 4 != 0, None, "x"),
               None, 1)


def test_a_run_records_sentinel_samples_that_move_no_agreement_and_no_engine(tmp_path, engine, simulator):
    scn = scenario(tiers={"agreement": 0.9, "models": {SONNET: {"agreement": 1.0}}},
                   pair={"agreement": 0.9})
    sim = simulator(**scn, snapshots={OPUS: "claude-opus-4-7-20260101"})
    write_sentinels(tmp_path / "tiers.jsonl", scn, "tiers", n=20)
    write_sentinels(tmp_path / "pair.jsonl", scn, "pair", n=20)
    policy = parse_policy({"pricing": PRICES, "defaults": {"min_samples": 5, "comparator": LABEL},
                           "categories": {"tiers": {"ladder": LADDER,
                                                    "sentinels": {"file": str(tmp_path / "tiers.jsonl")}},
                                          "pair": {"sentinels": {"file": str(tmp_path / "pair.jsonl")}}}})
    shadow_results(engine, policy, "pair")
    before = category_status(engine, policy)
    with session(engine) as s:
        states = {c.name: c.detector_state for c in s.exec(select(Category))}

    def client():
        return anthropic.AsyncAnthropic(base_url=sim.base_url, api_key=API_KEY, max_retries=0)

    ladder = run_category(engine, policy, "tiers", client=client)
    pair = run_category(engine, policy, "pair", client=client)
    assert list(ladder) == LADDER and list(pair) == [HAIKU, OPUS]
    assert ladder[OPUS]["accuracy"] == 1.0 and ladder[SONNET]["accuracy"] == 1.0
    assert 0.6 <= ladder[HAIKU]["accuracy"] < 1.0 and ladder[OPUS]["snapshot"] == "claude-opus-4-7-20260101"
    assert all(r["cases"] == 20 and r["compared"] == 20 and r["failed"] is False
               and r["baseline"] == r["accuracy"] for r in [*ladder.values(), *pair.values()])

    with session(engine) as s:
        rows = [r for r in s.exec(select(Sample)) if r.kind == "sentinel"]
        after_states = {c.name: c.detector_state for c in s.exec(select(Category))}
        baselines = {(b.category, b.model): b.snapshot for b in s.exec(select(SentinelBaseline))}
        changes = list(s.exec(select(RouteChange)))
    assert len(rows) == 20 * 5
    assert all(r.served_model == r.shadow_model and r.shadow_snapshot and r.shadow_cost_usd > 0
               and r.rung is None and r.error is None for r in rows)
    assert {r.shadow_snapshot for r in rows if r.shadow_model == OPUS} == {"claude-opus-4-7-20260101"}
    assert baselines[("tiers", OPUS)] == "claude-opus-4-7-20260101" and len(baselines) == 5
    # Nothing of it reached the engine, the live agreement or the routes.
    assert after_states == states and changes == []
    after = category_status(engine, policy)
    for name in before:
        for key in ("samples", "agreement", "route", "errors"):
            assert before[name].get(key) == after[name].get(key), (name, key)
    # Their cost is shadow spend.
    now = utcnow()
    spent = costs(engine, policy, now - dt.timedelta(hours=1), now)["categories"]
    assert spent["tiers"]["sentinel_usd"] == pytest.approx(sum(r.shadow_cost_usd for r in rows
                                                               if r.category == "tiers"))
    assert spent["tiers"]["shadow_usd"] >= spent["tiers"]["sentinel_usd"] > 0


# --- the e2e of the issue ---------------------------------------------------------------------


def cli_env(tmp_path, sim, db, redis_url, policy):
    (tmp_path / "tierguard.yaml").write_text(json.dumps(policy))
    upgrade(make_engine(db))
    return {**os.environ, "TIERGUARD_POLICY": str(tmp_path / "tierguard.yaml"),
            "TIERGUARD_DATABASE_URL": db, "TIERGUARD_REDIS_URL": redis_url,
            "ANTHROPIC_BASE_URL": sim.base_url, "ANTHROPIC_API_KEY": API_KEY}


def test_a_reference_that_drifts_raises_one_sentinel_failed_and_no_route_moves(tmp_path, simulator,
                                                                                 postgres_url, redis_url):
    scn = scenario(tickets={"agreement": 0.95})
    sim = simulator(**scn, snapshots={OPUS: "claude-opus-4-7-20260101"})
    write_sentinels(tmp_path / "tickets.jsonl", scn, "tickets")
    env = cli_env(tmp_path, sim, postgres_url, redis_url, {
        "pricing": PRICES, "categories": {"tickets": {
            "comparator": LABEL, "min_samples": 5, "auto_promote": True, "promote_min_samples": 5,
            "sentinels": {"file": "tickets.jsonl", "tolerance": 0.05}}}})
    first = last_json(tg("sentinels", "run", "--json", env=env, cwd=tmp_path).stdout)
    rungs = first["categories"]["tickets"]
    assert set(rungs) == {HAIKU, OPUS}
    assert set(rungs[OPUS]) >= {"accuracy", "baseline", "snapshot", "cases", "failed"}
    assert {k: rungs[OPUS][k] for k in ("accuracy", "baseline", "snapshot", "cases", "failed")} == {
        "accuracy": 1.0, "baseline": 1.0, "snapshot": "claude-opus-4-7-20260101", "cases": 40,
        "failed": False}

    # The API starts answering with a new snapshot behind the alias, wrong on about 20 % of the set.
    import httpx2

    httpx2.post(sim.base_url + "/_sim/script", json={
        "snapshots": {OPUS: "claude-opus-4-7-20260301"},
        "categories": {"tickets": {"models": {OPUS: {"agreement": 0.8}}}}}).raise_for_status()
    runs = [tg("sentinels", "run", "tickets", "--json", env=env, cwd=tmp_path, check=False) for _ in range(2)]
    assert [r.returncode for r in runs] == [1, 1]  # failing: a script can tell
    for done in runs:
        opus = last_json(done.stdout)["categories"]["tickets"][OPUS]
        assert opus["failed"] is True and opus["accuracy"] <= 0.9
        assert opus["snapshot"] == "claude-opus-4-7-20260301" and opus["baseline"] == 1.0
        assert opus["baseline_snapshot"] == "claude-opus-4-7-20260101"
        assert last_json(done.stdout)["categories"]["tickets"][HAIKU]["failed"] is False

    engine = make_engine(postgres_url)
    with session(engine) as s:
        events = list(s.exec(select(Event).where(Event.kind == "sentinel_failed")))
        changes = list(s.exec(select(RouteChange)))
        row = s.get(Category, "tickets")
        new_baseline = s.exec(select(SentinelBaseline).where(
            SentinelBaseline.snapshot == "claude-opus-4-7-20260301")).first()
    assert len(events) == 1, [e.summary for e in events]
    event = events[0]
    assert event.severity == "warning" and event.category == "tickets"
    assert OPUS in event.summary and "(the reference)" in event.summary
    assert "claude-opus-4-7-20260301" in event.summary and "claude-opus-4-7-20260101" in event.summary
    assert event.details["numbers"]["reference"] is True and event.details["numbers"]["baseline"] == 1.0
    assert changes == [] and (row is None or not (row.detector_state or {}).get("n"))
    assert new_baseline is None  # a failing snapshot gets no baseline of its own

    # Human output names the failure too.
    human = tg("sentinels", "run", "tickets", env={**env, "COLUMNS": "200"}, cwd=tmp_path, check=False)
    assert human.returncode == 1 and "FAILED" in human.stdout and "reference" in human.stdout


# --- the schedule -----------------------------------------------------------------------------


def test_beat_runs_due_categories_once_per_every_hours_under_a_lock(stack, simulator, tmp_path, sqlite_url):
    scn = scenario(alpha={"agreement": 1.0})
    sim = simulator(**scn)
    write_sentinels(tmp_path / "alpha.jsonl", scn, "alpha", n=10)
    settings = stack.configure(policy={"pricing": PRICES, "categories": {
        "alpha": {"comparator": LABEL, "sentinels": {"file": "alpha.jsonl", "every_hours": 24}},
        "quiet": {}}}, database_url=sqlite_url, base_url=sim.base_url, monitor_seconds=1)
    assert ("sentinels", SENTINELS_TASK, 1.0) in beat_entries(settings)
    engine = make_engine(sqlite_url)
    policy = load_policy(settings.policy)
    assert due(engine, policy) == ["alpha"]
    stack.start_worker(concurrency=2)
    stack.start_beat()

    def ran():
        with session(engine) as s:
            return list(s.exec(select(SentinelRun)))

    wait_until(lambda: len(ran()) == 2, 60, "beat's sentinel run")
    time.sleep(4)  # several more beat periods: nothing is due again for 24 hours
    with session(engine) as s:
        n = s.execute(sa.select(sa.func.count()).select_from(Sample)
                      .where(Sample.kind == "sentinel")).scalar()
    assert n == 10 * 2 and due(engine, policy) == []
    assert {r.model: r.accuracy for r in ran()} == {HAIKU: 1.0, OPUS: 1.0}
    # Due again once every_hours have passed; a run already under way is never joined.
    later = utcnow() + dt.timedelta(hours=24, seconds=1)
    assert due(engine, policy, later) == ["alpha"]
    r = redis.Redis.from_url(settings.redis_url)
    with held(r, keys.SENTINEL_LOCK.format(category="alpha")):
        assert run_locked(r, engine, policy, "alpha") is None
        with session(engine) as s:  # make it due now
            s.execute(sa.update(SentinelRun).values(at=utcnow() - dt.timedelta(hours=25)))
            s.commit()
        assert run_due(r, engine, policy) == {"alpha": {"busy": True}}


def test_a_judged_category_asks_the_judge_with_expected_as_the_reference_answer(tmp_path, sqlite_url,
                                                                               simulator):
    scn = {"seed": 5, "categories": {"notes": {"kind": "text", "agreement": 1.0, "paraphrase": 1.0}}}
    sim = simulator(**scn)
    write_sentinels(tmp_path / "notes.jsonl", scn, "notes", n=8)
    engine = make_engine(sqlite_url)
    upgrade(engine)
    policy = parse_policy({"pricing": PRICES, "categories": {"notes": {
        "comparator": {"type": "judge", "criteria": "Same facts as the reference, in any words."},
        "sentinels": {"file": str(tmp_path / "notes.jsonl")}}}})
    out = run_category(engine, policy, "notes", client=lambda: anthropic.AsyncAnthropic(
        base_url=sim.base_url, api_key=API_KEY, max_retries=0))
    # The candidate rewords every answer: only a judge that reads `expected` finds it right.
    assert out[HAIKU]["accuracy"] == 1.0 and out[OPUS]["accuracy"] == 1.0
    with session(engine) as s:
        rows = [r for r in s.exec(select(Sample)) if r.kind == "sentinel"]
    assert len(rows) == 16 and all(r.judge_model == OPUS and r.judge_cost_usd > 0 for r in rows)
    assert all(r.reason.startswith("judge: equivalent") for r in rows)


def test_sentinel_calls_yield_to_production_and_a_429_pauses_the_model(tmp_path, sqlite_url, redis_url,
                                                                      simulator):
    from tierguard.config import Settings
    from tierguard.headroom import pauses
    from tierguard.pipeline.sentinels import shadow_room

    scn = scenario(pair={"agreement": 1.0})
    sim = simulator(**scn)
    write_sentinels(tmp_path / "pair.jsonl", scn, "pair", n=6)
    policy = parse_policy({"pricing": PRICES, "defaults": {"comparator": LABEL},
                           "shadow_headroom": {"max_defer_minutes": 0.02},
                           "categories": {"pair": {"sentinels": {"file": str(tmp_path / "pair.jsonl")}}}})
    engine = make_engine(sqlite_url)
    upgrade(engine)
    r = redis.Redis.from_url(redis_url)
    room = shadow_room(Settings(redis_url=redis_url, database_url=sqlite_url), policy, r)
    # The first call (case 0 on haiku, one call in flight) meets a 429: haiku's shadows pause for
    # 30 s, so its other cases wait, past max_defer_minutes, and are skipped; opus answers all.
    import httpx2
    httpx2.post(f"{sim.base_url}/_sim/fail", json={"status": 429, "count": 1, "retry_after": 30})
    out = run_category(engine, policy, "pair", concurrency=1, room=room, attempts=3,
                       client=lambda: anthropic.AsyncAnthropic(base_url=sim.base_url, api_key=API_KEY,
                                                               max_retries=0))
    assert pauses.paused(r, [HAIKU]) and not pauses.paused(r, [OPUS])
    assert out[OPUS]["compared"] == 6 and out[HAIKU]["compared"] == 0 and out[HAIKU]["failed"] is False
    with session(engine) as s:
        haiku = [x for x in s.exec(select(Sample)) if x.shadow_model == HAIKU]
    assert {(x.error, x.reason.split(":")[0]) for x in haiku} == {("skipped", "rate_headroom")}


def test_a_run_with_few_cases_compared_is_inconclusive_and_an_edited_file_starts_new_baselines(sqlite_url,
                                                                                              tmp_path):
    from tierguard.pipeline.baselines import settle

    few = judge(Score(OPUS, "opus-1", 2 / 3, 50, 3), 0.98, None, 0.05)
    assert not few.failed and not few.new_baseline and few.reason.startswith("inconclusive: 3 of 50")
    assert not judge(Score(OPUS, "opus-1", 1.0, 50, 1), None, None, 0.05).new_baseline
    engine = make_engine(sqlite_url)
    upgrade(engine)
    path = tmp_path / "s.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "x"}], "expected": "POSITIVE"}\n')
    policy = parse_policy({"categories": {"c": {"sentinels": {"file": str(path)}}}})
    now = utcnow()
    with session(engine) as s:
        first, _ = settle(s, policy, "c", Score(OPUS, "opus-1", 1.0, 20, 20, "v1"), "r1", now)
        bad, event = settle(s, policy, "c", Score(OPUS, "opus-1", 0.8, 20, 20, "v1"), "r2", now)
        assert first.new_baseline and bad.failed and event is not None
        # Nothing conclusive since: still failing, in the answer as in the stored run, no new event.
        still, again = settle(s, policy, "c", Score(OPUS, "opus-1", None, 20, 0, "v1"), "r3", now)
        assert still.failed is True and again is None and s.get(SentinelRun, ("c", OPUS)).failed
        # The file was edited: its cases have no baseline yet; the run makes one, and passes.
        edited, _ = settle(s, policy, "c", Score(OPUS, "opus-1", 0.8, 20, 20, "v2"), "r4", now)
        assert edited.new_baseline and not edited.failed and edited.baseline == 0.8
