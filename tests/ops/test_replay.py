"""Replay (policy backtest): both line shapes, exact trigger line, clear errors, the CLI's JSON."""

import json
import random

import pytest

from tests.helpers import last_json, tg
from tierguard.engine.detector import Engine, EngineConfig, Situation, fresh_state
from tierguard.ops.replay import ReplayError, replay
from tierguard.policy import parse_policy
from tierguard.store.db import make_engine, upgrade


def memory_db():
    engine = make_engine("sqlite://")
    upgrade(engine)
    return engine


def prejudged(seed=1, n=6000, drift_at=3000):
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        cat = "steady" if i % 2 == 0 else "drifting"
        p = 0.97 if cat == "steady" or i < drift_at else 0.82
        lines.append(json.dumps({"category": cat, "agree": rng.random() < p}))
    return lines


def test_trigger_index_is_the_line_the_engine_flips_on():
    lines = prejudged()
    result = replay(lines, parse_policy({}), memory_db())
    [change] = result["changes"]
    # The same stream fed straight to the engine flips on the same sample.
    engine, state = Engine(EngineConfig()), fresh_state()
    drifting = [i for i, line in enumerate(lines) if '"drifting"' in line]
    for i in drifting:
        state, d = engine.update(state, json.loads(lines[i])["agree"], Situation("candidate", False, 0))
        if d.action == "demote":
            break
    assert change["index"] == i and change["category"] == "drifting"
    assert (change["from"], change["to"]) == ("claude-haiku-4-5", "claude-opus-4-7")
    cats = result["categories"]
    assert cats["steady"]["route"] == "claude-haiku-4-5" and cats["steady"]["samples"] == 3000
    assert cats["drifting"]["route"] == "claude-opus-4-7"


def test_full_lines_use_the_real_comparator():
    policy = parse_policy({"defaults": {"min_samples": 5},
                           "categories": {"inv": {"comparator": {"type": "json", "ignore_keys": ["notes"]}}}})
    good = {"category": "inv", "ts": "2026-11-01T10:00:00Z",
            "primary": {"model": "claude-haiku-4-5", "output": {"total": 10, "notes": "x"}},
            "shadow": {"model": "claude-opus-4-7", "output": '{"total": 10, "notes": "y"}'}}
    bad = {**good, "primary": {"model": "claude-haiku-4-5", "output": '{"total": 11}'}}
    lines = [json.dumps(good)] * 10 + [""] + [json.dumps(bad)] * 30
    result = replay(lines, policy, memory_db())
    assert result["categories"]["inv"]["samples"] == 40
    assert [c["index"] for c in result["changes"]] == [11 + 19]  # blank line 10 keeps numbering


@pytest.mark.parametrize(("line", "message"), [
    ("not json", "line 2: not JSON"),
    ('{"agree": true}', "line 2: category: required"),
    ('{"category": "x", "agree": "yes"}', "line 2: agree: must be true or false"),
    ('{"category": "x"}', "line 2: needs 'agree', or 'primary' and 'shadow'"),
    ('{"category": "x", "agree": true, "ts": "yesterday"}', "line 2: ts: not an ISO 8601 time"),
])
def test_bad_lines_name_the_line(line, message):
    with pytest.raises(ReplayError, match=message):
        replay(['{"category": "x", "agree": true}', line], parse_policy({}), memory_db())


def test_cli_replay_json_round_trip(tmp_path):
    import os

    path = tmp_path / "traffic.jsonl"
    path.write_text("\n".join(prejudged()) + "\n")
    policy = tmp_path / "observe.yaml"
    policy.write_text("defaults: {mode: observe}\n")
    env = {**os.environ}
    enforce = last_json(tg("replay", str(path), "--json", env=env, cwd=tmp_path).stdout)
    observe = last_json(tg("replay", str(path), "--policy", str(policy), "--json", env=env,
                           cwd=tmp_path).stdout)
    assert [c["category"] for c in enforce["changes"]] == ["drifting"]
    assert observe["changes"] == []
    assert observe["would_change"][0]["index"] == enforce["changes"][0]["index"]
    assert observe["categories"]["drifting"]["route"] == "claude-haiku-4-5"
    assert set(enforce["categories"]["drifting"]) == {"samples", "agreement", "route"}


def test_replay_from_the_database_equals_replay_of_its_export(tmp_path):
    import datetime as dt
    import os

    import sqlalchemy as sa

    from tierguard.routing.routes import lock_category
    from tierguard.store.db import session
    from tierguard.store.tables import RouteChange, Sample

    url = f"sqlite:///{tmp_path / 'history.db'}"
    engine = make_engine(url)
    upgrade(engine)
    policy = parse_policy({"categories": {"steady": {}, "drifting": {}}})  # on their candidate
    rng = random.Random(5)
    t0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    rows = []
    for i in range(8000):
        cat = ("steady", "drifting")[i % 2]
        p = 0.97 if cat == "steady" or i < 4000 else 0.8
        rows.append({"job_id": f"j{i:06d}", "category": cat, "kind": "shadow",
                     "served_model": "claude-haiku-4-5", "shadow_model": "claude-opus-4-7",
                     "agree": rng.random() < p, "score": 1.0, "comparator": "exact", "reason": "",
                     "detail": {}, "attempts": 1, "request_hash": "r", "primary_hash": "p",
                     "created_at": t0 + dt.timedelta(seconds=i),
                     "requested_at": t0 + dt.timedelta(seconds=i)})
    rows.append({**rows[0], "job_id": "noise", "kind": "noise", "agree": False})  # never replayed
    with session(engine) as s:
        for name in ("steady", "drifting"):
            lock_category(s, policy.category(name))
        s.execute(Sample.__table__.insert(), rows)
        s.add(RouteChange(category="drifting", from_model="claude-haiku-4-5", to_model="claude-opus-4-7",
                          rule="cusum", reason="recorded", actor="auto",
                          created_at=t0 + dt.timedelta(hours=1)))
        s.commit()
        exported = s.execute(sa.select(Sample.category, Sample.agree, Sample.created_at)
                             .where(Sample.kind == "shadow").order_by(Sample.created_at, Sample.job_id)).all()
    path = tmp_path / "export.jsonl"
    path.write_text("\n".join(json.dumps({"category": c, "agree": bool(a),
                                          "ts": (at.replace(tzinfo=dt.UTC)).isoformat()})
                              for c, a, at in exported))
    env = {**os.environ, "TIERGUARD_DATABASE_URL": url}
    from_file = last_json(tg("replay", str(path), "--json", env=env, cwd=tmp_path).stdout)
    from_db = last_json(tg("replay", "--from-db", "--json", env=env, cwd=tmp_path).stdout)
    keys = ("category", "from", "to", "index", "rule", "reason", "agreement")
    assert [{k: c[k] for k in keys} for c in from_db["changes"]] == [
        {k: c[k] for k in keys} for c in from_file["changes"]]
    assert [c["category"] for c in from_db["changes"]] == ["drifting"]
    assert from_db["categories"] == from_file["categories"]
    assert from_db["categories"]["steady"]["samples"] == 4000
    assert [(c["category"], c["to"], c["reason"]) for c in from_db["actual"]] == [
        ("drifting", "claude-opus-4-7", "recorded")]
    assert from_db["changes"][0]["at"].startswith("2026-11-01T")
    # Routes were not touched: the live database still serves drifting by the candidate.
    with session(engine) as s:
        assert s.execute(sa.text("SELECT routed_model FROM category WHERE name = 'drifting'")).scalar() \
            == "claude-haiku-4-5"
    narrowed = last_json(tg("replay", "--from-db", "--category", "steady", "--since", "3650d", "--json",
                            env=env, cwd=tmp_path).stdout)
    assert list(narrowed["categories"]) == ["steady"] and narrowed["actual"] == []
    neither = tg("replay", "--json", env=env, cwd=tmp_path, check=False)
    assert neither.returncode == 2 and "give a FILE or --from-db" in neither.stderr


def test_replay_from_the_database_restarts_evidence_where_the_recorder_did(tmp_path):
    """A prompt change mid-stream restarts promotion evidence live; replay --from-db makes the
    same promotion at the same sample, which it would not without the fingerprints."""
    import uuid

    from tierguard.compare import Verdict
    from tierguard.contract.job import ShadowJob
    from tierguard.ops.replay import from_db
    from tierguard.pipeline.calls import Answer
    from tierguard.pipeline.recorder import record

    db = make_engine(f"sqlite:///{tmp_path}/live.db")
    upgrade(db)
    policy = parse_policy({"defaults": {"auto_promote": True, "cooldown_minutes": 0, "start_on": "reference",
                                        "promote_min_samples": 100},
                           "categories": {"sentiment": {}}})
    agree = Verdict(True, 1.0, "same")
    promoted_at = None
    for i in range(400):  # all agree; the system prompt changes after 100 samples
        system = "sentiment v1" if i < 100 else "sentiment v2"
        job = ShadowJob(job_id=uuid.uuid4().hex, category="sentiment", served_model="claude-opus-4-7",
                        shadow_model="claude-haiku-4-5", primary_text="POSITIVE",
                        request={"max_tokens": 8, "system": system,
                                 "messages": [{"role": "user", "content": f"text {i}"}]},
                        served_snapshot="claude-opus-4-7-20260101")
        answer = Answer("POSITIVE", 10, 1, 5.0, snapshot="claude-haiku-4-5-20251001")
        outcome = record(db, None, policy, job, answer, agree, None, 1)
        if outcome.decision is not None and outcome.decision.action == "promote":
            promoted_at = i
            break
    # The reset comes with the 40th v2 sample (80 % of a window of 50); 150 agreements later, eligible.
    assert promoted_at == 100 + 39 + 162  # (162 without the reset)
    result = from_db(db, policy)
    assert [(r["index"], r["what"].split(" ")[0]) for r in result["evidence_resets"]] == [(139, "prompt")]
    assert [(c["index"], c["to"]) for c in result["changes"]] == [(promoted_at, "claude-haiku-4-5")]


def _ladder_lines():
    """A ladder category's file: agreement drops to 0.8 at line 100; the prompt changes at 120
    (a reset at 159, while the demotion watch is building up)."""
    rng = random.Random(7)
    lines = []
    for i in range(900):
        agree = True if i < 100 else rng.random() < 0.8
        lines.append(json.dumps({"category": "triage", "agree": agree,
                                 "prompt_fingerprint": "v1" if i < 120 else "v2"}))
    return lines


def test_a_reset_in_a_ladder_replay_keeps_its_demotion_watch():
    policy = parse_policy({"models": {"ladder": ["claude-haiku-4-5", "claude-sonnet-4-6", "claude-opus-4-7"]},
                           "categories": {"triage": {}}})
    lines = _ladder_lines()
    plain = replay([json.dumps({k: v for k, v in json.loads(x).items() if k != "prompt_fingerprint"})
                    for x in lines], policy, memory_db(), store=False)
    tracked = replay(lines, policy, memory_db(), store=False)
    assert [r["index"] for r in tracked["evidence_resets"]] == [159]
    # The candidate serves: the reset restarts promotion evidence only, the demotion comes as before.
    assert [c["index"] for c in tracked["changes"]] == [c["index"] for c in plain["changes"]]
    assert 159 < tracked["changes"][0]["index"] < 400


def test_snapshots_in_a_file_need_their_model():
    policy = parse_policy({"categories": {"sentiment": {}}})
    bad = json.dumps({"category": "sentiment", "agree": True, "served_snapshot": "x-1"})
    with pytest.raises(ReplayError, match="line 1: primary.model: required with its snapshot"):
        replay([bad], policy, memory_db(), store=False)
